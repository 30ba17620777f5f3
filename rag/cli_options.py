"""What several commands share: the sample files, the options of the model, the data directory, answers and
servers, and the RAG and sampling parameters made from them."""
import argparse
import os
from pathlib import Path

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="Hugging Face checkpoint folder (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], help="default: fp32 on CPU, bf16 on GPU")


def add_kv_format(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kv-format", metavar="FORMAT",  # checked by RAGOptions against the engine's KV_FORMATS
                   help="how passage KV chunks are stored and read: dtype (the model's: bf16 on GPU, fp32 on CPU), fp8 "
                        "(e4m3) or int4 (KIVI-style); chosen at the first ingestion and recorded in the data directory, "
                        "which refuses another (default: the data directory's, else dtype)")


STORE_HELP = ("a shared store instead of a data directory: redis://HOST:PORT/DB (documents, passages and KV chunks "
              "in one Redis database; any number of servers pointed at it serve the same documents)")


def add_data_dir(p: argparse.ArgumentParser,
                 help: str = "data directory (default: $CASCADE_RAG_DATA or ./cascade-data)") -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument("--data-dir", type=Path, help=help)
    where.add_argument("--store", metavar="URL", help=STORE_HELP)


def add_collection(p: argparse.ArgumentParser) -> None:
    p.add_argument("--collection", default="default", help="the collection of documents (default default)")


def add_answer_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--top-k", type=int, default=4, help="passages to retrieve (default 4)")
    p.add_argument("--max-tokens", type=int, default=128, help="most tokens to generate (default %(default)s)")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 is greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling: keep the most likely tokens whose "
                                                            "probabilities add up to this (default 1: all)")
    p.add_argument("--seed", type=int, help="random seed of sampling (default: a fresh one each answer)")


def add_server_options(p: argparse.ArgumentParser, token: bool = True) -> None:
    p.add_argument("--tls-ca", type=Path, help="CA certificate (PEM) to verify a TLS server with")
    if token:
        p.add_argument("--token", default=os.environ.get("CASCADE_RAG_TOKEN"),
                       help="bearer token (default: $CASCADE_RAG_TOKEN)")


def rag_options(args, **extra):
    from .options import RAGOptions
    return RAGOptions(model=getattr(args, "model", None), device=getattr(args, "device", None),
                      dtype=getattr(args, "dtype", None), kv_format=getattr(args, "kv_format", None), **extra)


def open_rag(args, **extra):
    from .pipeline import RAG
    return RAG(getattr(args, "store", None) or args.data_dir, model=getattr(args, "model", None),
               device=getattr(args, "device", None), dtype=getattr(args, "dtype", None),
               kv_format=getattr(args, "kv_format", None), **extra)


def read_inputs(paths, fields):
    """The documents (and input errors) of files and folders, the skipped files named in a warning."""
    import logging
    from .ingest import read_paths, skipped_message
    skipped = []
    items = list(read_paths(paths, fields, skipped))
    if skipped:
        logging.getLogger("cascade_rag").warning(skipped_message(skipped))
    return items


def sampling(args):
    from cascade_rag.engine import SamplingParams
    return SamplingParams(max_new_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                          seed=args.seed)


def add_ingest_limits(p: argparse.ArgumentParser) -> None:
    """The serve flags of each IngestLimits field, defaulting to SERVER_LIMITS."""
    from .ingest_limits import FLAGS, SERVER_LIMITS
    helps = {"max_title_chars": "characters of a document's title (it repeats in every passage)",
             "max_document_passages": "passages of one document", "max_document_tokens": "tokens of one document",
             "max_document_chunk_bytes": "bytes of one document's KV chunks (a size: 500M, 2G)",
             "max_call_passages": "passages of one IngestDocuments call", "max_call_tokens": "tokens of one call",
             "max_call_chunk_bytes": "bytes of one call's KV chunks (a size)",
             "disk_reserve_bytes": "free space to keep on the data directory's filesystem after an ingestion "
                                   "(a size)"}
    for name, flag in FLAGS.items():
        default = getattr(SERVER_LIMITS, name)
        shown = _size_flag(default) if name.endswith("_bytes") else str(default)
        p.add_argument(flag, dest=name, metavar="SIZE" if name.endswith("_bytes") else "N", default=shown,
                       help=f"ingestion limit: at most this many {helps[name]}; 0 for none (default {shown})"
                       if name != "disk_reserve_bytes" else f"ingestion limit: {helps[name]} (default {shown})")


def _size_flag(n: int) -> str:
    """4G, 256M or bytes: a size as a flag takes it."""
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if n and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return str(n)


def ingest_limits(args):
    """The IngestLimits of the serve flags (0 means no limit, but for the reserve)."""
    from .ingest_cost import parse_size
    from .ingest_limits import FLAGS, IngestLimits
    values = {}
    for name, flag in FLAGS.items():
        text = getattr(args, name)
        try:
            value = parse_size(text) if name.endswith("_bytes") else int(text)
            if value < 0:
                raise ValueError(f"{text!r} is negative")
        except ValueError as exc:
            from .cli_error import CLIError
            raise CLIError(f"{flag}: {exc}") from None
        values[name] = value if value or name == "disk_reserve_bytes" else None
    return IngestLimits(**values)


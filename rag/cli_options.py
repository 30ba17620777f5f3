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


STORE_HELP = ("a shared store instead of a data directory: redis://HOST:PORT/DB (documents, passages and KV chunks "
              "in one Redis database; any number of servers pointed at it serve the same documents)")


def add_data_dir(p: argparse.ArgumentParser,
                 help: str = "data directory (default: $CASCADE_RAG_DATA or ./cascade-data)") -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument("--data-dir", type=Path, help=help)
    where.add_argument("--store", metavar="URL", help=STORE_HELP)


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
                      dtype=getattr(args, "dtype", None), **extra)


def open_rag(args, **extra):
    from .pipeline import RAG
    return RAG(getattr(args, "store", None) or args.data_dir, model=getattr(args, "model", None),
               device=getattr(args, "device", None), dtype=getattr(args, "dtype", None), **extra)


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

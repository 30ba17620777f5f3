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


def add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, help="data directory (default: $CASCADE_RAG_DATA or ./cascade-data)")


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


def open_rag(args, **extra):
    from .pipeline import RAG
    return RAG(args.data_dir, model=getattr(args, "model", None), device=getattr(args, "device", None),
               dtype=getattr(args, "dtype", None), kv_format=getattr(args, "kv_format", None), **extra)


def sampling(args):
    from cascade_rag.engine import SamplingParams
    return SamplingParams(max_new_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                          seed=args.seed)

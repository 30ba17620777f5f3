"""Compiles the chunk-attention and rotary kernels for a Hopper target (sm_90) without a GPU, all the way to their
binaries, and prints one line per kernel and setting: `OK` or the error. Run in a process of its own with
TRITON_INTERPRET=0 (the test suite's processes use the interpreter, which runs the kernels' Python and so never sees
what only the compiler refuses: a name defined on one branch only, returns of two types)."""
import itertools

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from cascade_rag.kernels import rope as rotary
from cascade_rag.kernels.chunk_attention import decode, limited, prefill

TARGET = GPUTarget("cuda", 90, 32)
FLOATS = {"qk_scale", "qk_eps"}
POINTERS = {"table_ptr": "*i64", "kq_ptr": "*u8", "vq_ptr": "*u8", "part_ptr": "*fp32", "limit_ptr": "*i32", "limits_ptr": "*i64", "floors_ptr": "*i64",
            "pos_ptr": "*i32", "slot_ptr": "*i32", "shift_ptr": "*i32", "scale_ptr": "*fp32", "cos_ptr": "*fp32",
            "sin_ptr": "*fp32", "padding_ptr": "*i64"}
COMMON = dict(HQ=16, GROUP=2, HEAD_DIM=128, BLOCK_N=64, CHUNKS_P2=8, ALIGNED=True, DOT_F32=False, PRECISION="tf32",
              PDL=True)  # as the engine launches them on Hopper


def signature(fn) -> dict:
    return {p.name: "constexpr" if p.is_constexpr else "fp32" if p.name in FLOATS else
            POINTERS.get(p.name, "*bf16") if p.name.endswith("_ptr") else "i32" for p in fn.params}


# launch options of some settings (the others compile with Triton's defaults): a register cap (max_registers)
OPTIONS = {"decode FORMAT=2 ROPE=True maxnreg=168": dict(num_warps=2, num_stages=3, maxnreg=168)}


def settings():
    for fmt, rope in itertools.product((0, 1, 2), (False, True)):
        yield f"decode FORMAT={fmt} ROPE={rope}", decode._decode_kernel, dict(
            COMMON, GROUP_P2=2, BLOCK_S=16, ROPE=rope, QK_NORM=rope, PIECE_TILE=64, FORMAT=fmt)
    yield "decode FORMAT=2 ROPE=True maxnreg=168", decode._decode_kernel, dict(
        COMMON, BLOCK_N=32, GROUP_P2=2, BLOCK_S=16, ROPE=True, QK_NORM=True, PIECE_TILE=32, FORMAT=2)
    for fmt, limited_rows in itertools.product((0, 1, 2), (False, True)):  # limits come with a graph's table
        yield f"prefill FORMAT={fmt} LIMITED={limited_rows}", prefill._attn_kernel, dict(
            COMMON, BLOCK_M=64, SPLIT=True, TOTAL_IN_TABLE=limited_rows, FORMAT=fmt, LIMITED=limited_rows,
            WINDOW=False)
    yield "prefill FORMAT=0 LIMITED=True WINDOW=True", prefill._attn_kernel, dict(  # a windowed EPIC lead
        COMMON, BLOCK_M=64, SPLIT=True, TOTAL_IN_TABLE=True, FORMAT=0, LIMITED=True, WINDOW=True)
    yield "limited", limited._limited_kernel, dict(COMMON, BLOCK_M=64, SPLIT=True)
    for marked in (False, True):  # the merge of a windowed lead's splits leaves the rows marked done
        yield f"merge MARKED={marked}", prefill._merge_kernel, dict(HEAD_DIM=128, BLOCK_S=8, BLOCK_R=8, MARKED=marked,
                                                                      PDL=True)
    for seen, window in ((False, False), (True, False), (True, True)):  # a graph's prefill, a lead's, a windowed one's
        yield f"rope_store SEEN={seen} WINDOW={window}", rotary._rope_store_kernel, dict(
            HQ=16, HKV=8, HEAD_DIM=128, HQ_P2=16, HKV_P2=8, Q_NORM=True, K_NORM=True, HAS_SCALES=True,
            HAS_PADDING=True, SEEN=seen, WINDOW=window, CHUNKS_P2=64, BLOCK_C=8, PDL=True)


def main() -> None:
    for label, fn, constants in settings():
        try:
            triton.compile(ASTSource(fn, signature(fn), constexprs=constants), target=TARGET,
                           options=OPTIONS.get(label, {}))
            print(f"{label}: OK", flush=True)
        except Exception as exc:  # the compiler's own error, whatever its type, is the finding
            causes, e = [], exc
            while e is not None:
                causes.append(f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}")
                e = e.__cause__ or e.__context__
            print(f"{label}: FAILED {' <- '.join(causes)}", flush=True)


if __name__ == "__main__":
    main()

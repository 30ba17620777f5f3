"""The chunk-attention (and merge) and rotary kernels compile for a Hopper GPU (sm_90) in every setting the engine launches,
checked on any machine: Triton's interpreter, which the CPU tests use, runs a kernel's Python and never sees what
only the compiler refuses. Runs tests/kernels/compile_targets.py in a process of its own, without the
interpreter."""
import os
import subprocess
import sys

from tests.helpers import ROOT


def test_chunk_attention_kernels_compile_for_sm90():
    env = dict(os.environ, TRITON_INTERPRET="0")
    done = subprocess.run([sys.executable, "-m", "tests.kernels.compile_targets"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    lines = done.stdout.splitlines()
    assert done.returncode == 0 and len(lines) == 20, done.stdout + done.stderr  # 7 decode (one under a register
    # cap), 7 prefill, limited, 2 merges, 3 rotary
    assert [line for line in lines if not line.endswith(": OK")] == []

"""Triton kernels with their PyTorch references: chunk attention and fused RMSNorm + QKV projection."""
import os

import torch

if not torch.cuda.is_available():
    # Without a GPU, Triton kernels can only run in Triton's interpreter, which must be chosen before triton
    # is imported. The dispatchers still use the PyTorch references on the CPU unless asked otherwise.
    os.environ.setdefault("TRITON_INTERPRET", "1")

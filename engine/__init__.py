from .config import ModelConfig, ModelLoadError
from .embedded import ModelPreparationError, embedded_model_path
from .composition import DEFAULT_MODE, MODES
from .engine import LLMEngine
from .generation import Generation
from .options import BLEND_RATIO, EngineOptions, Recompute, default_device, default_dtype, default_prefill_batch_tokens
from .kv_chunk import (KV_FORMATS, LEVEL_DOCUMENT, LEVEL_QUERY, LEVEL_SYSTEM, FingerprintMismatch, KVChunk, KVChunkError,
                       check_kv_format)
from .sampling import SamplingParams
from .chunk_cache import ChunkCache, TieredChunkCache
from cascade_rag.kernels.options import KernelOptions

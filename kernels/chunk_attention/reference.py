"""The PyTorch reference of chunk attention (see the package's docstring for the semantics)."""
import torch

from ..kv_quant import dense


def chunk_attention_ref(q: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor],
                        scale: float, limits: torch.Tensor | None = None,
                        floors: torch.Tensor | None = None) -> torch.Tensor:
    """One softmax over the scores of all chunks; each KV head serves its group of query heads by a batched
    matmul, so no chunk is copied (repeated per head or concatenated). Packed chunks (kernels.kv_quant) are
    dequantised first. limits [Nq]: query i sees only the first limits[i] keys of the context chunks (all but the
    last, in order); floors [Nq, 3]: nor the context keys from floors[i, 0] to before floors[i, 1], nor the last
    chunk's first floors[i, 2] rows."""
    keys, values = [dense(k, torch.float32) for k in keys], [dense(v, torch.float32) for v in values]
    num_chunks, num_q, hq, d = q.shape
    hkv = keys[0].shape[1]
    group = hq // hkv
    rows = q.float().reshape(num_chunks, num_q, hkv, group, d).permute(0, 2, 3, 1, 4).reshape(num_chunks, hkv, -1, d)
    s = torch.cat([rows[c] @ k.float().permute(1, 2, 0) for c, k in enumerate(keys)], dim=-1) * scale
    own = keys[-1].shape[0]
    i = torch.arange(num_q, device=q.device)[:, None]
    j = torch.arange(own, device=q.device)[None, :]
    s.view(hkv, group, num_q, -1)[..., s.shape[-1] - own:].masked_fill_(j > i + own - num_q, float("-inf"))
    if limits is not None:
        context = torch.arange(s.shape[-1] - own, device=q.device)[None, :]
        s.view(hkv, group, num_q, -1)[..., :s.shape[-1] - own].masked_fill_(context >= limits.to(q.device)[:, None],
                                                                            float("-inf"))
    if floors is not None:
        sink, floor, own_floor = (f.to(q.device)[:, None] for f in floors.unbind(1))
        context = torch.arange(s.shape[-1] - own, device=q.device)[None, :]
        s.view(hkv, group, num_q, -1)[..., :s.shape[-1] - own].masked_fill_((context >= sink) & (context < floor),
                                                                            float("-inf"))
        s.view(hkv, group, num_q, -1)[..., s.shape[-1] - own:].masked_fill_(j < own_floor, float("-inf"))
    p = torch.softmax(s, dim=-1).split([k.shape[0] for k in keys], dim=-1)
    out = sum(p_c @ v.float().transpose(0, 1) for p_c, v in zip(p, values))  # [Hkv, group * Nq, D]
    return out.view(hkv, group, num_q, d).permute(2, 0, 1, 3).reshape(num_q, hq, d).to(q.dtype)

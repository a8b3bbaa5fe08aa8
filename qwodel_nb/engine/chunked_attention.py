"""Eager attention a few samples at a time, for the fast search's passes on a CPU.

Eager attention holds one score matrix per sample and head, ``heads x queries x keys`` values,
and makes several passes over it: the product, the scaling, the mask, the softmax (in float32),
the product with the values. A grid-batched pass holds several samples: at qwodel's CPU default of
512-token samples, 4 a pass, SmolLM2's 9 heads take 9.4 MB of scores per sample, 38 MB per call.
glibc's malloc serves blocks above its mmap threshold (at most 32 MiB on 64-bit systems; mallopt(3),
``M_MMAP_THRESHOLD``) with fresh pages from the kernel, which it zeroes on first touch: every such
call pays some 20,000 page faults besides its arithmetic (``bench/cpu_attention_probe.py``).

Attention never mixes samples, so the model's own eager function, called on a few samples at a
time, computes each sample's output as the whole call does. :func:`rows_per_chunk` picks the
samples per call so that a call's float32 score matrices stay within ``SCORE_CHUNK_BYTES`` (at
least one sample); :func:`attention` makes the calls. Measured side by side on SmolLM2 (bench/RESULTS.md,
"Eager attention a few samples at a time on a CPU"): at 32 x 512 tokens on 2 cores the AWQ phase
took 170.0 s against 205.2 s with whole calls; at 8 x 256, and on 16 cores, the same time within noise.

Whether the result is the model's own is not assumed: ``engine/lean_attention.py`` compares the two
on first use for each kind of attention module, dtype and autocast state, and drops the chunked form
where they differ.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

#: float32 score-matrix bytes one call may hold: one 512-token SmolLM2 sample, three of 256 tokens;
#: well under the mmap threshold, so the allocator reuses the blocks from call to call
SCORE_CHUNK_BYTES = 8 * 1024**2


def rows_per_chunk(query: torch.Tensor, key: torch.Tensor) -> int:
    """Samples per call for ``query`` [batch, heads, queries, dim] and ``key`` [batch, kv heads, keys, dim]:
    as many as keep their float32 score matrices within ``SCORE_CHUNK_BYTES``, at least one."""
    heads, queries, keys = query.shape[1], query.shape[2], key.shape[2]
    return max(1, SCORE_CHUNK_BYTES // max(1, heads * queries * keys * 4))


def attention(eager: Callable, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              attention_mask: torch.Tensor | None, scaling: float, dropout: float, rows: int,
              **kwargs: Any) -> tuple[torch.Tensor, None]:
    """``eager``'s attention output, computed ``rows`` samples at a time and joined along the batch.

    The attention weights are not returned (None, as PyTorch's fused attention returns them): joining
    them would write the whole score matrix again. A mask shared by the batch (leading size 1) is
    given whole to every call; one per sample is cut with the samples; any other shape raises
    ``RuntimeError``, which makes the caller drop the form for this kind of module.
    """
    batch = query.shape[0]
    if key.shape[0] != batch or value.shape[0] != batch:
        raise RuntimeError("keys and values do not follow the queries' batch")
    per_sample = attention_mask is not None and attention_mask.dim() > 0 and attention_mask.shape[0] != 1
    if per_sample and attention_mask.shape[0] != batch:
        raise RuntimeError(f"a mask of batch {attention_mask.shape[0]} for {batch} samples")
    outputs = []
    for start in range(0, batch, rows):
        stop = min(start + rows, batch)
        mask = attention_mask[start:stop] if per_sample else attention_mask
        output, _ = eager(module, query[start:stop], key[start:stop], value[start:stop], mask, scaling, dropout, **kwargs)
        outputs.append(output)
    return torch.cat(outputs), None

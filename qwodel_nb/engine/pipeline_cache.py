"""Where llm-compressor's sequential pipeline keeps the layer inputs between decoder layers.

The sequential pipeline calibrates one decoder layer at a time. Between layers it keeps every
calibration sample's inputs to the next layer: the hidden states, the rotary cos/sin tables, the
4-D attention mask that eager attention adds, and the token ids. llm-compressor 0.14 keeps them
on the CPU by default (``oneshot(sequential_offload_device="cpu")``). Each layer then copies them
from pageable host memory to the GPU twice (the calibration pass and the propagation pass), and
copies its outputs back once.

On one H200, at 16 x 512 tokens, keeping them on the GPU took the fast search's AWQ phase from
1.67 to 1.40 s on SmolLM2-135M, and from 11.09 to 8.95 s on the Llama-3-8B shape. Stock AWQ
gained 1.09x and 1.12x from the same change. The peak GPU memory fell slightly in all four cases
(bench/RESULTS.md, "Layer inputs on the GPU, fewer waits"; other leases of the machine gave
1.06-1.17x and 1.29x for the fast search).

A GPU run keeps them on the GPU when they fit with room to spare: they may take at most
``SPARE_SHARE`` of the memory the GPU has free beyond the run's estimated peak. Otherwise, and on
a CPU (where both places are the same), they stay where llm-compressor puts them. A run that runs
out of GPU memory moves them back to the CPU before it lowers anything else (engine/backoff.py).
"""

from __future__ import annotations

from typing import Any

#: the share of the GPU memory left free beyond the estimated peak that the layer inputs may take
SPARE_SHARE = 0.5


def layer_inputs_bytes(config: Any, dtype_bytes: int, tokens: int, seq_len: int) -> int:
    """The pipeline's cache between two layers for ``tokens`` calibration tokens in samples of at
    most ``seq_len``: per token, the hidden states in and out of a layer and the cos/sin tables
    (in the compute dtype), one row of the 4-D mask (``seq_len`` values), and 16 bytes of token ids
    and 2-D mask."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = getattr(text, "hidden_size", None) or 4096
    heads = getattr(text, "num_attention_heads", None) or max(hidden // 128, 1)
    head_dim = getattr(text, "head_dim", None) or hidden // max(heads, 1)
    return tokens * ((2 * hidden + 2 * head_dim + seq_len) * dtype_bytes + 16)


def fits_on_gpu(cache_bytes: int, free_bytes: int | None, peak_bytes: int | None) -> bool:
    """Whether ``cache_bytes`` of layer inputs fit within ``SPARE_SHARE`` of what a GPU with
    ``free_bytes`` free has left beyond a run peaking at ``peak_bytes`` (False when either is unknown)."""
    if free_bytes is None or peak_bytes is None:
        return False
    return cache_bytes <= SPARE_SHARE * (free_bytes - peak_bytes)

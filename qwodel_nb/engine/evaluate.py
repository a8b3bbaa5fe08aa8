"""Perplexity on held-out text, for reports and tests."""

from __future__ import annotations

import math
from typing import Any, Sequence


def perplexity(model: Any, tokenizer: Any, texts: Sequence[str], *, seq_len: int = 512, max_windows: int = 64) -> float:
    """Perplexity of ``model`` on ``texts`` joined by end-of-text tokens, in windows of ``seq_len``."""
    import torch

    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for text in texts:
        if text.strip():
            ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
            if eos is not None:
                ids.append(eos)
    if len(ids) < 2:
        raise ValueError("held-out text is too short to measure perplexity")
    device = next(model.parameters()).device
    total_nll = 0.0
    total_tokens = 0
    model.eval()
    with torch.no_grad():
        for window, start in enumerate(range(0, len(ids) - 1, seq_len)):
            if window >= max_windows:
                break
            chunk = torch.tensor([ids[start : start + seq_len + 1]], device=device)
            if chunk.shape[1] < 2:
                break
            logits = model(chunk[:, :-1]).logits.float()
            nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1), reduction="sum"
            )
            total_nll += float(nll)
            total_tokens += chunk.shape[1] - 1
    return math.exp(total_nll / total_tokens)

"""Perplexity on held-out text, for reports and tests."""

from __future__ import annotations

import math
from typing import Any, Sequence


def perplexity(model: Any, tokenizer: Any, texts: Sequence[str], *, seq_len: int = 512, max_windows: int = 64) -> float:
    """Perplexity of ``model`` on ``texts`` joined by end-of-text tokens, in windows of ``seq_len``."""
    return windows_perplexity(window_losses(model, tokenizer, texts, seq_len=seq_len, max_windows=max_windows))


def windows_perplexity(windows: Sequence[tuple[float, int]]) -> float:
    """Perplexity from :func:`window_losses`' ``(nll, tokens)`` pairs."""
    return math.exp(sum(nll for nll, _ in windows) / sum(n for _, n in windows))


def window_losses(model: Any, tokenizer: Any, texts: Sequence[str], *, seq_len: int = 512,
                  max_windows: int = 64) -> list[tuple[float, int]]:
    """Summed negative log-likelihood and predicted-token count of each window :func:`perplexity` reads.

    Two models scored on the same text can be compared window by window (a paired comparison).
    """
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
    windows: list[tuple[float, int]] = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(ids) - 1, seq_len):
            if len(windows) >= max_windows:
                break
            chunk = torch.tensor([ids[start : start + seq_len + 1]], device=device)
            if chunk.shape[1] < 2:
                break
            logits = model(chunk[:, :-1]).logits.float()
            nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1), reduction="sum"
            )
            windows.append((float(nll), chunk.shape[1] - 1))
    return windows


def layer_output_errors(reference: Any, quantized: Any, tokenizer: Any, texts: Sequence[str], *, seq_len: int = 512) -> list[float]:
    """Relative output error ``||y_q - y|| / ||y||`` of every decoder layer, on held-out text.

    Both models read the same tokens; each layer's error therefore includes what the layers
    before it passed on, which is what the model's output finally sees.
    """
    import torch

    from .model_info import decoder_layers

    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if len(ids) >= seq_len:
            break
    if not ids:
        raise ValueError("held-out text is empty")
    batch = torch.tensor([ids[:seq_len]])

    def capture(model) -> list[torch.Tensor]:
        _, layers = decoder_layers(model)
        outputs: list[torch.Tensor] = []
        hooks = [
            layer.register_forward_hook(lambda _m, _a, out: outputs.append((out[0] if isinstance(out, tuple) else out).float().cpu()))
            for layer in layers
        ]
        try:
            with torch.no_grad():
                model(batch.to(next(model.parameters()).device))
        finally:
            for hook in hooks:
                hook.remove()
        return outputs

    ref = capture(reference)
    got = capture(quantized)
    return [float((g - r).norm() / r.norm().clamp_min(1e-12)) for r, g in zip(ref, got)]


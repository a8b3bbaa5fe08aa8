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


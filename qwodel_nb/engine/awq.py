"""The AWQ run itself, on llm-compressor 0.14's current API.

Two modifiers, built fresh for every run (they keep state between lifecycle events):
``llmcompressor.modifiers.transform.awq.AWQModifier`` searches and applies the smoothing scales,
then ``QuantizationModifier`` applies the W4A16 scheme (asymmetric by default, as in the AWQ
paper) with the chosen group size. Calibration uses llm-compressor's default pipeline, which
for AWQ is the sequential one (one decoder layer at a time); ``pipeline="basic"`` corrupts AWQ's
reference outputs and is never used.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

AWQ_PRESETS = {False: "W4A16_ASYM", True: "W4A16"}


def build_recipe(
    *, group_size: int, symmetric: bool, ignore: tuple[str, ...], awq_cls: type | None = None, clip: str = "none"
) -> list:
    """Fresh ``[AWQModifier, QuantizationModifier]`` for one run.

    ``clip="observer"`` gives the weights llm-compressor's memoryless MSE observer, which shrinks
    each group's range to the least weight error; ``"search"`` is done by qwodel's AWQModifier
    (see ``engine/awq_clip.py``) and leaves the scheme's min-max observer in place.
    """
    from compressed_tensors.quantization import preset_name_to_scheme
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform.awq import AWQModifier

    scheme = preset_name_to_scheme(AWQ_PRESETS[bool(symmetric)], ["Linear"])
    scheme.weights.group_size = group_size
    if clip == "observer":
        scheme.weights.observer = "memoryless_mse"
    awq = (awq_cls or AWQModifier)()
    quant = QuantizationModifier(config_groups={"group_0": scheme}, ignore=list(ignore))
    return [awq, quant]


@contextlib.contextmanager
def cpu_pin_memory_workaround() -> Iterator[bool]:
    """Let llm-compressor 0.14's AWQ run on a machine without an accelerator.

    Its smoothing step pins the cached layer inputs (``IntermediatesCache.pin_memory``) to speed
    up host-to-device copies; ``Tensor.pin_memory`` raises when there is no accelerator. Pinning
    is only a speed-up for copies that do not happen on such a machine, so while no accelerator
    is present the method is replaced by a no-op for the duration of the run. With an
    accelerator nothing is changed. Yields whether the workaround is active.
    """
    import torch
    from llmcompressor.pipelines.cache import IntermediatesCache

    if torch.accelerator.is_available():
        yield False
        return
    original = IntermediatesCache.__dict__["pin_memory"]

    def _no_pin(self, batch_index: int, input_names: Any = None) -> None:
        return None

    IntermediatesCache.pin_memory = _no_pin
    try:
        yield True
    finally:
        IntermediatesCache.pin_memory = original


def run_oneshot(model: Any, tokenizer: Any, dataloader: Any, recipe: list) -> None:
    """Calibrate ``model`` in place with ``recipe`` over ``dataloader`` (batches already formed)."""
    from llmcompressor import oneshot

    with cpu_pin_memory_workaround():
        oneshot(
            model=model,
            processor=tokenizer,
            dataset=dataloader,
            recipe=recipe,  # a DataLoader is used as it is: our batches, our batch size
        )


def round_to_nearest(model: Any, *, group_size: int, symmetric: bool, ignore: tuple[str, ...]) -> Any:
    """The same W4A16 scheme without AWQ (data-free): the baseline AWQ is measured against.

    The model is changed in place; its forward pass then computes with the 4-bit weights.
    """
    from llmcompressor import oneshot

    _, quant = build_recipe(group_size=group_size, symmetric=symmetric, ignore=ignore)
    oneshot(model=model, recipe=[quant])
    return model

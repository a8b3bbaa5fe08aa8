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
    *, group_size: int, symmetric: bool, ignore: tuple[str, ...], awq_cls: type | None = None, clip: str = "none",
    quant_cls: type | None = None,
) -> list:
    """Fresh ``[AWQModifier, QuantizationModifier]`` for one run (``awq_cls`` and ``quant_cls``:
    subclasses of llm-compressor's to use instead, such as qwodel's in ``engine/awq_capture.py`` and
    ``engine/weight_qparams.py``).

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
    quant = (quant_cls or QuantizationModifier)(config_groups={"group_0": scheme}, ignore=list(ignore))
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


@contextlib.contextmanager
def distributed_workarounds() -> Iterator[bool]:
    """Fit llm-compressor 0.14's distributed calibration to qwodel's workers, for one run.

    llm-compressor expects rank 0 alone to load the weights (``load_offloaded_model``) and the
    other ranks to share them through distributed offload caches. qwodel's workers each load the
    whole model instead (on their own GPU, or in their own host memory), so:

    * offload caches stay local to each process (``OffloadCache.cls_from_device`` returns the
      one-process class): no shared host memory written by several ranks, no collective per
      weight update, and rank 0 can save alone after the process group is closed;
    * ``QuantizationModifier`` observes every module's weights on every rank (its
      ``is_distributed`` is false for the run) instead of one rank per module and a broadcast:
      the weight parameters are data-free and identical on every rank, and the broadcast would
      skip modules executing on the CPU and miss modules offloaded to it;
    * without an accelerator (the gloo rehearsal), ``awq.base._allreduce_data_sum`` (stock search
      only) is replaced by :func:`qwodel_nb.engine.ranks.all_reduce`: it assumes an accelerator.

    The activation sums and losses of AWQ and of the clipping search are still all-reduced.
    Outside a distributed run nothing is changed. Yields whether active.
    """
    import torch

    from .ranks import all_reduce, is_distributed

    if not is_distributed():
        yield False
        return
    from compressed_tensors.offload.cache.base import OffloadCache
    from llmcompressor.modifiers.quantization.quantization import base as quant_base
    from llmcompressor.modifiers.transform.awq import base as awq_base

    original_cls = OffloadCache.__dict__["cls_from_device"]
    local_classes = {}

    def cls_from_device(cls, device=None):
        from compressed_tensors.offload.cache.cpu import CPUCache
        from compressed_tensors.offload.cache.device import DeviceCache
        from compressed_tensors.offload.cache.disk import DiskCache

        kind = torch.device(device).type if device != "disk" else "disk"
        local_classes.setdefault(kind, 0)
        return {"cpu": CPUCache, "disk": DiskCache}.get(kind, DeviceCache)

    saved = (awq_base._allreduce_data_sum, quant_base.is_distributed)
    OffloadCache.cls_from_device = classmethod(cls_from_device)
    quant_base.is_distributed = lambda: False
    if not torch.accelerator.is_available():
        awq_base._allreduce_data_sum = lambda data: all_reduce(list(data))
    try:
        yield True
    finally:
        OffloadCache.cls_from_device = original_cls
        awq_base._allreduce_data_sum, quant_base.is_distributed = saved


def run_oneshot(model: Any, tokenizer: Any, dataloader: Any, recipe: list, *, activations_on_device: bool = False) -> None:
    """Calibrate ``model`` in place with ``recipe`` over ``dataloader`` (batches already formed).

    ``activations_on_device`` keeps the sequential pipeline's cache of each layer's inputs (the
    hidden states, the rotary tables and the attention mask of every sample) on the execution
    device instead of llm-compressor's default, the CPU, which copies them to the device and back
    for every layer (see ``engine/pipeline_cache.py`` for when a run does this).
    """
    from llmcompressor import oneshot
    from llmcompressor.utils.dev import get_main_device

    with cpu_pin_memory_workaround(), distributed_workarounds():
        oneshot(
            model=model,
            processor=tokenizer,
            dataset=dataloader,
            recipe=recipe,  # a DataLoader is used as it is: our batches, our batch size
            sequential_offload_device=str(get_main_device()) if activations_on_device else "cpu",
        )


def round_to_nearest(model: Any, *, group_size: int, symmetric: bool, ignore: tuple[str, ...]) -> Any:
    """The same W4A16 scheme without AWQ (data-free): the baseline AWQ is measured against.

    The model is changed in place; its forward pass then computes with the 4-bit weights.
    """
    from llmcompressor import oneshot

    _, quant = build_recipe(group_size=group_size, symmetric=symmetric, ignore=ignore)
    oneshot(model=model, recipe=[quant])
    return model

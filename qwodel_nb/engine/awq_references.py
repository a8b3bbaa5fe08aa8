"""The parents' reference outputs, kept from the calibration pass instead of computed again.

Before searching a mapping's scales, llm-compressor 0.14 runs the mapping's parent module on every
cached batch (``AWQModifier._run_samples``) to get the outputs the candidates are compared with.
The calibration pass that filled that cache had just run the same module on the same arguments:
the cache holds exactly the arguments of those calls. As long as no weight inside the parent has
changed since, the outputs of those calls are the references. Within a decoder layer the mappings
change their smooth and balance layers one after the other; in a Llama layer no mapping changes
a module inside a later mapping's parent (``input_layernorm -> q/k/v``, ``v -> o``,
``post_attention_layernorm -> gate/up``, ``up -> down``), so every reference can be kept.

:class:`CapturedReferences` keeps a copy of each parent's output during the calibration pass (a
forward hook that the fast search registers beside its argument hook) and hands it out for the
mapping's search when:

* the outputs were made on a device of ``DEVICES`` (a CPU or a CUDA GPU), and on a GPU, the
  outputs kept at once fit in ``GPU_FREE_FRACTION`` of the memory free when the first was kept
  (a parent whose outputs would not fit has them computed, as in stock);
* no module inside the parent is among the layers the mappings before it have changed;
* there is one output per cached batch;
* the run's first kept references equalled, bit for bit, the ones ``_run_samples`` computes: that
  comparison is made once per run, and where it fails (another architecture that changes its
  parent's output in place, say) every reference of the run is computed as in stock.

Anything else computes the references as llm-compressor does. On SmolLM2 at 8 x 256 on this
project's 2-core CPU the recomputation was 2.3 s of a 47 s fast run. The cost is memory: a
decoder layer's parents' outputs are held from its calibration pass until its mappings are
searched (on a Llama layer four tensors of the hidden size per token, where stock holds one at a
time): some 20 MiB for SmolLM2 at 8 x 256, 512 MiB for an 8B model at 32 x 512 in bfloat16. On
a GPU that memory lies within the calibration pass's own peak (the layer's activations, eager
attention's scores), and the search sizes its passes by what is allocated beside that peak
(``awq_search.gpu_working_budget``), so the kept outputs shrink those passes rather than raise
the run's peak; the cap bounds them where memory is short.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

#: devices whose calibration-pass outputs are kept as references
DEVICES = ("cpu", "cuda")
#: on a GPU, the outputs kept at once take at most this share of the memory free at the first
GPU_FREE_FRACTION = 0.1
#: benchmarks switch it off to compare
ENABLED = True


class CapturedReferences:
    """Each parent's outputs from the calibration pass, one per cached batch, until its mapping runs."""

    def __init__(self, gpu_bytes: int | None = None) -> None:
        self.outputs: dict[torch.nn.Module, list[torch.Tensor]] = {}
        self.trusted: bool | None = None  # None until the first kept references were compared
        self.kept = 0  # mappings whose references were kept (for the tests and the benchmarks)
        self.gpu_bytes = gpu_bytes  # the cap on a GPU, read at its first output unless given
        self.gpu_held = 0  # bytes of kept outputs on a GPU now
        self.dropped: set[torch.nn.Module] = set()  # parents whose outputs did not fit: computed

    def hook(self) -> Callable[..., None]:
        """A forward hook (``with_kwargs``) that keeps a copy of the parent's first output."""
        outputs, dropped = self.outputs, self.dropped

        def keep(module: torch.nn.Module, args: Any, kwargs: Any, output: Any) -> None:
            first = output[0] if isinstance(output, tuple) else output
            if not isinstance(first, torch.Tensor) or module in dropped:
                return
            kind = first.device.type
            if kind not in DEVICES:
                return
            if kind != "cpu":
                if self.gpu_bytes is None:
                    self.gpu_bytes = free_gpu_share(first.device)
                size = first.numel() * first.element_size()
                if self.gpu_held + size > self.gpu_bytes:  # computed instead: free what it held
                    dropped.add(module)
                    self.gpu_held -= _gpu_size(outputs.pop(module, []))
                    return
                self.gpu_held += size
            # a copy: the model may change the returned tensor in place after the call
            outputs.setdefault(module, []).append(first.detach().clone())

        return keep

    def reference(self, modifier: Any, parent: torch.nn.Module, changed: set) -> list[torch.Tensor]:
        """The parent's reference outputs: kept ones where they are valid (module docstring), else
        computed by ``modifier._run_samples``."""
        kept = self.outputs.pop(parent, None)
        self.dropped.discard(parent)
        if kept is not None:
            self.gpu_held -= _gpu_size(kept)
        if (
            kept is None
            or self.trusted is False
            or len(kept) != len(modifier._parent_args_cache[parent])
            or any(module in changed for module in parent.modules())
        ):
            return modifier._run_samples(parent)
        if self.trusted is None:  # once per run: the kept outputs against the computed ones
            computed = modifier._run_samples(parent)
            self.trusted = all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(kept, computed))
            return computed
        self.kept += 1
        return kept

    def clear(self) -> None:
        self.outputs.clear()
        self.dropped.clear()
        self.gpu_held = 0


def free_gpu_share(device: torch.device) -> int:
    """``GPU_FREE_FRACTION`` of the memory free on ``device`` now (a CUDA device)."""
    free, _total = torch.cuda.mem_get_info(device)
    return int(GPU_FREE_FRACTION * free)


def _gpu_size(tensors: list[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t.device.type != "cpu")

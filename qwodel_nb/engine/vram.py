"""GPU memory as NVML reports it, without creating a CUDA context.

NVML numbers its devices in PCI bus order and ignores ``CUDA_VISIBLE_DEVICES``; CUDA programs
(torch included) see only the visible devices, renumbered from 0. :func:`probe` applies the
variable itself so that each :class:`GpuInfo` carries the index torch will use for it. torch
orders devices fastest-first unless ``CUDA_DEVICE_ORDER=PCI_BUS_ID``; on machines whose GPUs
are all of one model, which is the case this tool is built for, both orders agree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

GIB = 1024**3


@dataclass(frozen=True)
class GpuInfo:
    index: int  # as torch numbers it (after CUDA_VISIBLE_DEVICES)
    nvml_index: int
    name: str
    total_bytes: int
    used_bytes: int
    free_bytes: int
    uuid: str = ""


@dataclass(frozen=True)
class VramReport:
    gpus: tuple[GpuInfo, ...] = ()
    reason: str = ""  # why there is no GPU, when there is none
    cuda_visible_devices: str | None = field(default=None)

    @property
    def has_gpu(self) -> bool:
        return bool(self.gpus)

    def calibration_gpu(self) -> GpuInfo | None:
        """llm-compressor calibrates on the first visible GPU."""
        return self.gpus[0] if self.gpus else None


def _visible_selection(value: str | None, count: int, uuids: list[str]) -> list[int] | None:
    """NVML indices selected by CUDA_VISIBLE_DEVICES, in CUDA's order; None means all."""
    if value is None:
        return None
    chosen: list[int] = []
    for raw in value.split(","):
        item = raw.strip()
        if not item:
            break
        if item.lstrip("-").isdigit():
            idx = int(item)
            if idx < 0 or idx >= count:
                break  # CUDA stops at the first invalid entry
            chosen.append(idx)
        else:
            # A UUID or a unique prefix of one ("GPU-8f3a..."), as CUDA accepts.
            matches = [i for i, u in enumerate(uuids) if u.startswith(item) or u == f"GPU-{item}"]
            if len(matches) != 1:
                break
            chosen.append(matches[0])
        if chosen[-1] in chosen[:-1]:
            chosen.pop()
            break
    return chosen


def probe() -> VramReport:
    """Read every visible GPU's memory. Never raises; a machine without GPU gets a reason."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        import pynvml
    except ImportError:
        return VramReport(reason="the NVML bindings (package nvidia-ml-py) are not installed", cuda_visible_devices=visible)
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded...
        return VramReport(reason=f"no NVIDIA driver found ({type(exc).__name__})", cuda_visible_devices=visible)
    try:
        count = pynvml.nvmlDeviceGetCount()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        uuids = [_as_text(pynvml.nvmlDeviceGetUUID(h)) for h in handles]
        selection = _visible_selection(visible, count, uuids)
        order = list(range(count)) if selection is None else selection
        gpus = []
        for torch_index, nvml_index in enumerate(order):
            handle = handles[nvml_index]
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(
                GpuInfo(
                    index=torch_index,
                    nvml_index=nvml_index,
                    name=_as_text(pynvml.nvmlDeviceGetName(handle)),
                    total_bytes=int(mem.total),
                    used_bytes=int(mem.used),
                    free_bytes=int(mem.free),
                    uuid=uuids[nvml_index],
                )
            )
    except Exception as exc:  # pragma: no cover - depends on the driver
        return VramReport(reason=f"NVML could not read the GPUs ({exc})", cuda_visible_devices=visible)
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # pragma: no cover
            pass
    if not gpus:
        reason = "no GPU is visible" + (f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else "")
        return VramReport(reason=reason, cuda_visible_devices=visible)
    return VramReport(gpus=tuple(gpus), cuda_visible_devices=visible)


def _as_text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def format_bytes(n: int | float | None) -> str:
    if n is None:
        return "n/a"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"  # pragma: no cover

"""Calibration settings chosen from VRAM headroom, then capped by what the model and data allow.

The table is the product's contract (DESIGN.md section 2). "GB" in it is GiB (2**30 bytes), the
unit nvidia-smi and NVML report. A value the user sets always wins over the table; every value,
set or chosen, is then capped by the model's maximum positions and the number of usable
calibration samples, and each cap is reported with its reason.

Machines without a GPU get the CPU row: AWQ on a CPU is practical only for small models and
small calibration sets, so it calibrates on 32 samples of 512 tokens, one at a time (the CPU
gains nothing from batching but memory traffic).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

GIB = 1024**3

# (upper bound of headroom in GiB, batch_size, seq_len, num_samples); the last row has no bound.
HEADROOM_TABLE = (
    (4, 1, 2048, 32),
    (8, 2, 4096, 64),
    (16, 4, 4096, 128),
    (24, 8, 8192, 128),
    (None, 16, 8192, 256),
)
CPU_ROW = (1, 512, 32)


@dataclass(frozen=True)
class Choice:
    value: int
    source: str  # "you" or "auto"
    reason: str
    caps: tuple[str, ...] = field(default=())

    def describe(self) -> str:
        text = f"{self.value} ({self.reason})"
        return text + "".join(f"; {cap}" for cap in self.caps)


@dataclass(frozen=True)
class CalibrationConfig:
    batch_size: Choice
    seq_len: Choice
    num_samples: Choice
    row: str  # which table row applied

    def as_dict(self) -> dict:
        return {
            name: {"value": c.value, "source": c.source, "reason": c.reason, "caps": list(c.caps)}
            for name, c in (("batch_size", self.batch_size), ("seq_len", self.seq_len), ("num_samples", self.num_samples))
        } | {"row": self.row}


def table_row(headroom_bytes: int | None) -> tuple[str, tuple[int, int, int]]:
    """The row for ``headroom_bytes`` (None: no GPU), with a label that names it."""
    if headroom_bytes is None:
        return "no GPU: CPU row", CPU_ROW
    gib = headroom_bytes / GIB
    lower = 0
    for upper, bs, sl, ns in HEADROOM_TABLE:
        if upper is None or gib < upper:
            shown = math.floor(gib * 10) / 10  # round down: 3.99 GB must not read "4.0 GB is < 4 GB"
            label = f"headroom {shown:.1f} GB is " + (f"< {upper} GB" if lower == 0 else (
                f"{lower}-{upper} GB" if upper is not None else f"> {lower} GB"))
            return label, (bs, sl, ns)
        lower = upper
    raise AssertionError("unreachable")  # pragma: no cover


def resolve(
    headroom_bytes: int | None,
    batch_size: int | None,
    seq_len: int | None,
    num_samples: int | None,
    *,
    max_positions: int | None = None,
    available_samples: int | None = None,
) -> CalibrationConfig:
    """Apply the table, the user's values and the caps, in that order."""
    label, (bs_auto, sl_auto, ns_auto) = table_row(headroom_bytes)

    def pick(user: int | None, auto: int) -> tuple[int, str, str]:
        if user is not None:
            return user, "you", "set by you"
        return auto, "auto", label

    bs, bs_src, bs_reason = pick(batch_size, bs_auto)
    sl, sl_src, sl_reason = pick(seq_len, sl_auto)
    ns, ns_src, ns_reason = pick(num_samples, ns_auto)

    sl_caps: list[str] = []
    if max_positions is not None and sl > max_positions:
        sl_caps.append(f"capped from {sl} to {max_positions}: the model's maximum positions")
        sl = max_positions
    ns_caps: list[str] = []
    if available_samples is not None and ns > available_samples:
        ns_caps.append(f"capped from {ns} to {available_samples}: non-empty samples available")
        ns = available_samples
    bs_caps: list[str] = []
    if bs > ns:
        bs_caps.append(f"capped from {bs} to {ns}: the number of samples")
        bs = ns

    return CalibrationConfig(
        batch_size=Choice(bs, bs_src, bs_reason, tuple(bs_caps)),
        seq_len=Choice(sl, sl_src, sl_reason, tuple(sl_caps)),
        num_samples=Choice(ns, ns_src, ns_reason, tuple(ns_caps)),
        row=label,
    )

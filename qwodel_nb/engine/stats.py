"""Per-mapping AWQ statistics, captured during the run (never recomputed afterwards).

One :class:`MappingRecord` per resolved AWQ mapping: which layer, which smoothing layer and
balance layers, the grid of (ratio, duo scaling) points with their losses, the chosen point,
the round-to-nearest loss (the identity point, first in the grid), and summaries of the chosen
scales and of the input activation means; the full vectors stay available in memory.
:class:`Stats` holds the records of a run and exports them.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

SUMMARY_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)

# Mapping kinds, from the names of the balance layers (Llama-style names and common variants).
_KINDS = (
    ("attention input", ("q_proj", "k_proj", "v_proj", "qkv_proj", "query_key_value", "c_attn", "Wqkv")),
    ("attention output", ("o_proj", "out_proj", "dense", "c_proj")),
    ("MLP input", ("gate_proj", "up_proj", "gate_up_proj", "w1", "w3", "fc1", "c_fc")),
    ("MLP down projection", ("down_proj", "w2", "fc2")),
)
KIND_ORDER = tuple(k for k, _ in _KINDS) + ("other",)


def mapping_kind(balance_layers: Sequence[str]) -> str:
    last = balance_layers[0].rsplit(".", 1)[-1] if balance_layers else ""
    for kind, names in _KINDS:
        if last in names:
            return kind
    return "other"


def summarize(values: Any) -> dict[str, float]:
    """min, max, mean, std and quantiles of a 1-D tensor or array."""
    import numpy as np

    if hasattr(values, "detach"):
        values = values.detach().float().cpu().numpy()
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size == 0:
        return {}
    out = {"min": float(arr.min()), "max": float(arr.max()), "mean": float(arr.mean()), "std": float(arr.std())}
    for q, v in zip(SUMMARY_QUANTILES, np.quantile(arr, SUMMARY_QUANTILES)):
        out[f"q{int(q * 100):02d}"] = float(v)
    return out


@dataclass
class ClipRecord:
    """The clipping search on one Linear layer: chosen ratios and the output error they remove."""

    name: str
    layer: int
    mean_ratio: float  # average over the layer's weight groups (1.0: nothing clipped)
    clipped_share: float  # share of groups whose range was shrunk
    error_before: float  # per-group output error with the plain min-max range, per output element
    error_after: float

    @property
    def reduction(self) -> float:
        """error after / error before (1.0: clipping found nothing better)."""
        return self.error_after / self.error_before if self.error_before > 0 else 1.0

    @classmethod
    def from_result(cls, result: Any) -> "ClipRecord":
        match = re.search(r"\.(\d+)\.", f".{result.name}.")
        return cls(result.name, int(match.group(1)) if match else -1, result.mean_ratio, result.clipped_share,
                   result.error_before, result.error_after)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "layer": self.layer,
            "mean_ratio": self.mean_ratio,
            "clipped_share": self.clipped_share,
            "error_before": self.error_before,
            "error_after": self.error_after,
        }


@dataclass
class MappingRecord:
    index: int
    layer: int
    smooth_layer: str
    balance_layers: tuple[str, ...]
    parent: str
    best_ratio: float
    duo_scaling: bool
    rtn_loss: float
    best_loss: float
    grid_ratios: tuple[float, ...] = field(repr=False)
    grid_duo: tuple[bool, ...] = field(repr=False)
    grid_losses: tuple[float, ...] = field(repr=False)
    scale_summary: dict[str, float] | None = field(repr=False)  # None until summarized (after the run)
    activation_summary: dict[str, float] | None = field(repr=False)
    scales: Any = field(default=None, repr=False)  # numpy array, one scale per input channel
    activation_means: Any = field(default=None, repr=False)
    #: per grid point, whether its loss is the stock loss over all tokens; empty when all are. Token
    #: screening (engine/awq_screening.py) evaluates only a few points in full and estimates the rest;
    #: fused attention (engine/search_attention.py) confirms only the points near the best
    grid_exact: tuple[bool, ...] = field(default=(), repr=False)

    @property
    def kind(self) -> str:
        return mapping_kind(self.balance_layers)

    @property
    def reduction(self) -> float:
        """best loss / round-to-nearest loss (1.0: AWQ found nothing better than identity)."""
        return self.best_loss / self.rtn_loss if self.rtn_loss > 0 else 1.0

    def as_dict(self, vectors: bool = False) -> dict[str, Any]:
        out = {
            "index": self.index,
            "layer": self.layer,
            "kind": self.kind,
            "smooth_layer": self.smooth_layer,
            "balance_layers": list(self.balance_layers),
            "parent": self.parent,
            "best_ratio": self.best_ratio,
            "duo_scaling": self.duo_scaling,
            "rtn_loss": self.rtn_loss,
            "best_loss": self.best_loss,
            "reduction": self.reduction,
            "grid": [
                {"ratio": r, "duo_scaling": d, "loss": v, "exact": e}
                for r, d, v, e in zip(self.grid_ratios, self.grid_duo, self.grid_losses, self.exact_points)
            ],
            "scales": dict(self.scale_summary),
            "activation_means": dict(self.activation_summary),
        }
        if vectors:
            out["scale_vector"] = [float(v) for v in self.scales] if self.scales is not None else None
            out["activation_mean_vector"] = (
                [float(v) for v in self.activation_means] if self.activation_means is not None else None
            )
        return out

    @property
    def exact_points(self) -> tuple[bool, ...]:
        """Per grid point, whether its loss is exact (not a screening or fused-attention estimate)."""
        return self.grid_exact or (True,) * len(self.grid_losses)

    def flat(self) -> dict[str, Any]:
        """One flat row (for CSV and DataFrames): summaries spread into columns, no grid or vectors."""
        row = {k: v for k, v in self.as_dict().items() if k not in {"grid", "scales", "activation_means"}}
        row["balance_layers"] = ";".join(self.balance_layers)
        row.update({f"scale_{k}": v for k, v in self.scale_summary.items()})
        row.update({f"act_{k}": v for k, v in self.activation_summary.items()})
        row["grid_points"] = len(self.grid_losses)
        return row

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MappingRecord":
        import numpy as np

        grid = data.get("grid", [])
        vec = data.get("scale_vector")
        act = data.get("activation_mean_vector")
        return cls(
            index=data["index"],
            layer=data["layer"],
            smooth_layer=data["smooth_layer"],
            balance_layers=tuple(data["balance_layers"]),
            parent=data.get("parent", ""),
            best_ratio=data["best_ratio"],
            duo_scaling=data["duo_scaling"],
            rtn_loss=data["rtn_loss"],
            best_loss=data["best_loss"],
            grid_ratios=tuple(g["ratio"] for g in grid),
            grid_duo=tuple(g["duo_scaling"] for g in grid),
            grid_losses=tuple(g["loss"] for g in grid),
            grid_exact=() if all(g.get("exact", True) for g in grid) else tuple(g.get("exact", True) for g in grid),
            scale_summary=dict(data.get("scales", {})),
            activation_summary=dict(data.get("activation_means", {})),
            scales=None if vec is None else np.asarray(vec),
            activation_means=None if act is None else np.asarray(act),
        )


class Stats:
    """The records of one run, in the order AWQ resolved them."""

    def __init__(self, records: Iterable[MappingRecord] = (), search: dict | None = None, clips: Iterable[Any] = ()):
        self.records: list[MappingRecord] = list(records)
        #: how the grid search ran: "fast" or "stock", method counts, mappings handed to stock
        self.search: dict = dict(search or {})
        #: one record per Linear layer the clipping search treated (``clip="search"``)
        self.clips: list[ClipRecord] = [c if isinstance(c, ClipRecord) else ClipRecord.from_result(c) for c in clips]

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self):
        return iter(self.records)

    def __getitem__(self, i: int) -> MappingRecord:
        return self.records[i]

    @property
    def layers(self) -> list[int]:
        return sorted({r.layer for r in self.records})

    @property
    def kinds(self) -> list[str]:
        present = {r.kind for r in self.records}
        return [k for k in KIND_ORDER if k in present]

    def for_layer(self, layer: int) -> list[MappingRecord]:
        return [r for r in self.records if r.layer == layer]

    def to_records(self, vectors: bool = False) -> list[dict[str, Any]]:
        return [r.as_dict(vectors=vectors) for r in self.records]

    def to_json(self, path: str | None = None, vectors: bool = False) -> str:
        payload = {
            "version": 1,
            "search": self.search,
            "mappings": self.to_records(vectors=vectors),
            "clips": [c.as_dict() for c in self.clips],
        }
        text = json.dumps(payload, indent=1, allow_nan=True)
        if path is not None:
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(text + "\n")
        return text

    @classmethod
    def from_json(cls, text_or_path: str) -> "Stats":
        text = text_or_path
        if not text_or_path.lstrip().startswith("{"):
            with open(text_or_path, encoding="utf-8") as fh:
                text = fh.read()
        data = json.loads(text)
        return cls(
            (MappingRecord.from_dict(d) for d in data["mappings"]),
            search=data.get("search"),
            clips=[ClipRecord(**c) for c in data.get("clips", [])],
        )

    def to_csv(self, path: str | None = None) -> str:
        rows = [r.flat() for r in self.records]
        buf = io.StringIO()
        if rows:
            writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        text = buf.getvalue()
        if path is not None:
            with open(path, "w", encoding="utf-8", newline="") as fh:
                fh.write(text)
        return text

    def to_dataframe(self):
        """A pandas DataFrame, one row per mapping (pandas must be installed)."""
        try:
            import pandas as pd
        except ImportError:  # pragma: no cover - depends on the environment
            raise ImportError("to_dataframe() needs pandas: pip install pandas") from None
        return pd.DataFrame([r.flat() for r in self.records])

    def overview(self) -> dict[str, Any]:
        if not self.records:
            return {"mappings": 0}
        reductions = [r.reduction for r in self.records if math.isfinite(r.reduction)]
        return {
            "mappings": len(self.records),
            "layers": len(self.layers),
            "mean_reduction": sum(reductions) / len(reductions) if reductions else float("nan"),
            "identity_chosen": sum(r.best_ratio == 0.0 and not r.duo_scaling for r in self.records),
            "search": self.search,
            "clipped_layers": len(self.clips),
            "mean_clip_error_reduction": (
                sum(c.reduction for c in self.clips) / len(self.clips) if self.clips else None
            ),
        }

    def __repr__(self) -> str:
        o = self.overview()
        if not o["mappings"]:
            return "Stats(0 mappings)"
        clipping = ""
        if self.clips:
            clipping = (f"; clipping on {len(self.clips)} layers removed "
                        f"{100 * (1 - o['mean_clip_error_reduction']):.1f}% of their output error")
        return (f"Stats({o['mappings']} mappings over {o['layers']} layers, mean loss AWQ/RTN "
                f"{o['mean_reduction']:.3f}, identity kept for {o['identity_chosen']}{clipping})")

"""Settings of one quantization run, validated once, immutable afterwards.

The names follow the original ``qwodel`` API (``model_path``, ``output_dir``, ``seq_length``...) and
the shorter names of the notebook surfaces (``model``, ``output``, ``seq_len``); :func:`make_settings`
accepts both and always produces one :class:`Settings`. ``None`` for ``batch_size``, ``seq_len`` or
``num_samples`` means "choose from VRAM headroom" (see :mod:`qwodel_nb.engine.autoconfig`).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from typing import Any

from .errors import SettingsError
from .secrets import Secret

SUPPORTED_BACKENDS = ("awq",)
SUPPORTED_FORMATS = ("int4",)
SUPPORTED_GROUP_SIZES = (128, 64, 32)
SUPPORTED_DTYPES = ("auto", "bfloat16", "float16", "float32")
AWQ_SEARCHES = ("fast", "stock")  # qwodel's scale search, or llm-compressor's own loop
CLIP_MODES = ("search", "observer", "none")  # weight clipping after smoothing; see engine/awq_clip.py
DEFAULT_CALIBRATION = "wikitext:wikitext-2-raw-v1"

# Accepted spellings -> canonical field name.
ALIASES = {
    "model_path": "model",
    "model_id": "model",
    "output_dir": "output",
    "output_path": "output",
    "calibration": "calibration_dataset",
    "dataset": "calibration_dataset",
    "split": "calibration_split",
    "seq_length": "seq_len",
    "max_seq_length": "seq_len",
    "num_calibration_samples": "num_samples",
    "hf_token": "token",
    "search": "awq_search",
    "num_gpus": "gpus",
}


@dataclass(frozen=True)
class Settings:
    """Everything that decides what a run does. Build it with :func:`make_settings`."""

    model: str
    output: str | None = None
    backend: str = "awq"
    format: str = "int4"
    calibration_dataset: Any = DEFAULT_CALIBRATION
    calibration_split: str = "train"
    text_column: str | None = None
    token: Secret | None = field(default=None, repr=False, compare=False)
    batch_size: int | None = None
    seq_len: int | None = None
    num_samples: int | None = None
    ignore: tuple[str, ...] | None = None
    mappings: tuple[tuple[str, tuple[str, ...]], ...] | None = None  # AWQ (smooth layer, balance layers)
    group_size: int | None = None
    symmetric: bool = False
    trust_remote_code: bool = False
    device: str = "auto"
    dtype: str = "auto"
    overwrite: bool = False
    seed: int = 0
    awq_search: str = "fast"
    clip: str = "search"
    gpus: int = 1  # processes under torchrun, one GPU each (engine/distributed.py)

    def replace(self, **changes: Any) -> "Settings":
        """A new validated Settings with ``changes`` applied (aliases accepted)."""
        current = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return make_settings(**{**current, **_canonical(changes)})

    def public_dict(self) -> dict[str, Any]:
        """The settings as plain JSON-friendly values, without the token."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "token":
                out["token"] = None if self.token is None else f"*** (from {self.token.source})"
                continue
            value = getattr(self, f.name)
            if f.name == "calibration_dataset":
                value = describe_calibration_source(value)
            elif f.name == "mappings" and value is not None:
                value = [{"smooth_layer": smooth, "balance_layers": list(balance)} for smooth, balance in value]
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(Settings)]


def describe_calibration_source(source: Any) -> str:
    """A short text naming a calibration source, for plans, summaries and reprs."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, (list, tuple)):
        return f"<in-memory list of {len(source)} texts>"
    name = type(source).__name__
    length = getattr(source, "num_rows", None)
    return f"<in-memory {name}{'' if length is None else f' of {length} rows'}>"


def canonical_options(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` under their canonical names; an unknown or doubled name raises :class:`SettingsError`."""
    return _canonical(options)


def _canonical(options: dict[str, Any]) -> dict[str, Any]:
    names = set(field_names())
    out: dict[str, Any] = {}
    given_as: dict[str, str] = {}
    for key, value in options.items():
        name = ALIASES.get(key, key)
        if name not in names:
            known = sorted(names | set(ALIASES))
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise SettingsError(f"Unknown setting '{key}'.{hint} Known settings: {', '.join(sorted(names))}.")
        if name in out:
            raise SettingsError(f"Setting '{name}' was given twice (as '{given_as[name]}' and '{key}'); give it once.")
        out[name] = value
        given_as[name] = key
    return out


def _positive_int(name: str, value: Any, *, allow_none: bool = True, minimum: int = 1) -> int | None:
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        if allow_none:
            return None
        raise SettingsError(f"'{name}' must be set to a whole number.")
    if isinstance(value, bool):
        raise SettingsError(f"'{name}' must be a whole number or 'auto', not {value!r}.")
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise SettingsError(f"'{name}' must be a whole number or 'auto', not {value!r}.") from None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise SettingsError(f"'{name}' must be a whole number or 'auto', not {value!r}.")
    if value < minimum:
        raise SettingsError(f"'{name}' must be at least {minimum}, got {value}.")
    return value


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"true", "yes", "1", "on"}:
        return True
    if isinstance(value, str) and value.strip().lower() in {"false", "no", "0", "off"}:
        return False
    raise SettingsError(f"'{name}' must be true or false, not {value!r}.")


def _text(name: str, value: Any, *, allow_none: bool = False) -> str | None:
    if value is None and allow_none:
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip():
        raise SettingsError(f"'{name}' must be a non-empty text, not {value!r}.")
    return value.strip()


def _ignore(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [v for v in (part.strip() for part in value.split(",")) if v]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v.strip() for v in value):
        raise SettingsError(
            "'ignore' must be a list of module names or 're:' patterns, "
            'for example ["lm_head", "re:.*vision_tower.*"].'
        )
    return tuple(_pattern("ignore", v) for v in value)


def _pattern(name: str, pattern: Any) -> str:
    if not isinstance(pattern, str) or not pattern.strip():
        raise SettingsError(f"'{name}' patterns must be module names or 're:' patterns (text), not {pattern!r}.")
    pattern = pattern.strip()
    if pattern.startswith("re:"):
        import re

        try:
            re.compile(pattern[3:])
        except (re.error, OverflowError, RecursionError) as exc:
            raise SettingsError(f"'{name}' pattern {pattern!r} is not a valid regular expression: {exc}.") from None
    return pattern


MAPPINGS_EXAMPLE = (
    'for example [{"smooth_layer": "re:.*self_attn_layer_norm$", '
    '"balance_layers": ["re:.*q_proj$", "re:.*k_proj$", "re:.*v_proj$"]}]'
)


def _mappings(value: Any) -> tuple[tuple[str, tuple[str, ...]], ...] | None:
    """AWQ mappings as ``((smooth_layer, (balance_layer, ...)), ...)``, from dicts or pairs."""
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or not value:
        raise SettingsError(f"'mappings' must be a non-empty list of AWQ mappings, {MAPPINGS_EXAMPLE}.")
    out = []
    for item in value:
        if isinstance(item, dict):
            unknown = set(item) - {"smooth_layer", "balance_layers"}
            if unknown or "smooth_layer" not in item or "balance_layers" not in item:
                raise SettingsError(
                    f"Each AWQ mapping needs exactly the keys 'smooth_layer' and 'balance_layers', got {sorted(map(str, item))}; "
                    f"{MAPPINGS_EXAMPLE}."
                )
            smooth, balance = item["smooth_layer"], item["balance_layers"]
        elif isinstance(item, (list, tuple)) and len(item) == 2:
            smooth, balance = item
        else:
            raise SettingsError(f"'mappings' entries must be mappings with smooth_layer and balance_layers, {MAPPINGS_EXAMPLE}.")
        if isinstance(balance, str):
            balance = [balance]
        if not isinstance(balance, (list, tuple)) or not balance:
            raise SettingsError(f"'balance_layers' of an AWQ mapping must be a non-empty list of patterns, {MAPPINGS_EXAMPLE}.")
        out.append((_pattern("mappings", smooth), tuple(_pattern("mappings", b) for b in balance)))
    return tuple(out)


def _device(value: Any) -> str:
    device = _text("device", value).lower()
    if device in {"auto", "cpu", "cuda", "cuda:0", "gpu"}:
        return {"gpu": "cuda", "cuda:0": "cuda"}.get(device, device)
    if device.startswith("cuda:"):
        raise SettingsError(
            f"device {value!r}: llm-compressor calibrates on the first visible GPU; "
            f"start Python with CUDA_VISIBLE_DEVICES={device[5:]} and use device='cuda'."
        )
    raise SettingsError(f"device must be 'auto', 'cuda' or 'cpu', not {value!r}.")


def make_settings(**options: Any) -> Settings:
    """Validate ``options`` (aliases accepted) and return :class:`Settings`.

    Raises :class:`SettingsError` with a one-line message naming the setting at fault.
    """
    opts = _canonical(options)
    if "model" not in opts or opts["model"] is None:
        raise SettingsError("No model given: set 'model' (a local folder or a Hugging Face hub id).")

    backend = _text("backend", opts.get("backend", "awq")).lower()
    if backend not in SUPPORTED_BACKENDS:
        raise SettingsError(f"backend {backend!r} is not supported; supported: {', '.join(SUPPORTED_BACKENDS)}.")
    fmt = _text("format", opts.get("format", "int4")).lower()
    if fmt not in SUPPORTED_FORMATS:
        raise SettingsError(
            f"format {fmt!r} is not supported by the awq backend; supported: {', '.join(SUPPORTED_FORMATS)} "
            "(4-bit weights, 16-bit activations, served by vLLM's W4A16 kernels)."
        )

    calibration = opts.get("calibration_dataset", DEFAULT_CALIBRATION)
    if calibration is None:
        calibration = DEFAULT_CALIBRATION
    if isinstance(calibration, os.PathLike):
        calibration = os.fspath(calibration)
    if isinstance(calibration, str):
        calibration = _text("calibration_dataset", calibration)
    elif isinstance(calibration, tuple):
        calibration = list(calibration)
    if isinstance(calibration, list):
        if not all(isinstance(t, str) for t in calibration):
            raise SettingsError("'calibration_dataset' as a list must hold texts (str) only.")
    elif not isinstance(calibration, str) and not hasattr(calibration, "column_names"):
        raise SettingsError(
            "'calibration_dataset' must be a hub id, 'repo:subset', a .json/.jsonl/.txt file, "
            f"a list of texts or a datasets.Dataset, not {type(calibration).__name__}."
        )

    token = opts.get("token")
    if token is not None and not isinstance(token, Secret):
        if not isinstance(token, str) or not token.strip():
            raise SettingsError("'token' must be a Hugging Face token (text), or left unset.")
        token = Secret(token)

    group_size = _positive_int("group_size", opts.get("group_size"))
    if group_size is not None and group_size not in SUPPORTED_GROUP_SIZES:
        raise SettingsError(
            f"group_size {group_size} is not served by vLLM's W4A16 kernels; use one of "
            f"{', '.join(map(str, SUPPORTED_GROUP_SIZES))}, or leave it unset for automatic choice."
        )

    dtype = _text("dtype", opts.get("dtype", "auto")).lower()
    dtype = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32"}.get(dtype, dtype)
    if dtype not in SUPPORTED_DTYPES:
        raise SettingsError(f"dtype {dtype!r} is not supported; use one of {', '.join(SUPPORTED_DTYPES)}.")

    seed = opts.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise SettingsError(f"'seed' must be a whole number, not {seed!r}.")

    awq_search = _text("awq_search", opts.get("awq_search", "fast")).lower()
    if awq_search not in AWQ_SEARCHES:
        raise SettingsError(
            f"awq_search {awq_search!r} is not known; use 'fast' (the default: faster, with stock's choices "
            "in every measured run) or 'stock' (llm-compressor's own grid search loop)."
        )

    clip = _text("clip", opts.get("clip", "search")).lower()
    if clip not in CLIP_MODES:
        raise SettingsError(
            f"clip {clip!r} is not known; use 'search' (the default: output-aware clipping search), "
            "'observer' (llm-compressor's MSE weight observer) or 'none'."
        )

    return Settings(
        model=_text("model", opts["model"]),
        output=_text("output", opts.get("output"), allow_none=True),
        backend=backend,
        format=fmt,
        calibration_dataset=calibration,
        calibration_split=_text("calibration_split", opts.get("calibration_split", "train")),
        text_column=_text("text_column", opts.get("text_column"), allow_none=True),
        token=token,
        batch_size=_positive_int("batch_size", opts.get("batch_size")),
        seq_len=_positive_int("seq_len", opts.get("seq_len"), minimum=8),
        num_samples=_positive_int("num_samples", opts.get("num_samples")),
        ignore=_ignore(opts.get("ignore")),
        mappings=_mappings(opts.get("mappings")),
        group_size=group_size,
        symmetric=_bool("symmetric", opts.get("symmetric", False)),
        trust_remote_code=_bool("trust_remote_code", opts.get("trust_remote_code", False)),
        device=_device(opts.get("device", "auto")),
        dtype=dtype,
        overwrite=_bool("overwrite", opts.get("overwrite", False)),
        seed=seed,
        awq_search=awq_search,
        clip=clip,
        gpus=_positive_int("gpus", opts.get("gpus", 1), allow_none=False),
    )

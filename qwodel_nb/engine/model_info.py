"""What can be known about a model before its weights are loaded.

The configuration comes from ``config.json``; the module tree (names and shapes of every
Linear layer, parameter count) from instantiating the model class on the ``meta`` device, which
allocates nothing; the bytes on disk and the stored dtype from the safetensors headers (read
from local files, or through the hub's metadata API, which fetches headers only).
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass, field
from typing import Any

from .errors import ModelNotFoundError, UnsupportedModelError
from .hub_errors import hub_error_message
from .secrets import Secret, call_translating, redact

DTYPE_BYTES = {
    "F64": 8, "F32": 4, "BF16": 2, "F16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
}
TORCH_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")


@dataclass(frozen=True)
class LinearLayer:
    name: str
    in_features: int
    out_features: int


@dataclass
class ModelInfo:
    source: str  # local folder or hub id, as given
    is_local: bool
    config: Any = field(repr=False)
    class_name: str  # the transformers class that will be instantiated
    model_type: str
    num_layers: int
    hidden_size: int | None
    max_positions: int | None
    dtype: str  # stored dtype, e.g. "bfloat16"
    param_count: int
    weight_bytes: int  # bytes of the weights as stored (safetensors) or estimated from dtype
    weight_bytes_source: str  # "safetensors headers" or "parameter count x dtype"
    linear_layers: list[LinearLayer] = field(repr=False)
    largest_layer_bytes: int = 0  # the biggest decoder layer, at the stored dtype
    layer_prefix: str = ""  # e.g. "model.layers"
    tied_embeddings: bool = False
    module_names: list[str] = field(default_factory=list, repr=False)
    meta_model: Any = field(default=None, repr=False)  # the module tree on the meta device

    @property
    def dtype_bytes(self) -> int:
        return TORCH_DTYPE_BYTES.get(self.dtype, 2)


def _config_dtype(config: Any) -> str:
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if dtype is None:
        return "float32"
    return str(dtype).replace("torch.", "")


def is_hub_id(text: str) -> bool:
    return bool(_HUB_ID.match(text)) and not text.startswith((".", "/", "~"))


def is_local_model(source: str) -> bool:
    """True when ``source`` names a local path (existing or not): checking it needs no network."""
    return os.path.exists(os.path.expanduser(source)) or not is_hub_id(source)


def load_config(source: str, token: Secret | None, trust_remote_code: bool):
    """Read the model's configuration, turning every failure into a one-line, actionable error."""
    from transformers import AutoConfig

    path = os.path.expanduser(source)
    local = os.path.isdir(path)
    if not local:
        if os.path.exists(path):
            raise ModelNotFoundError(f"Model path {source!r} is a file; give the folder that holds config.json.")
        if not is_hub_id(source):
            raise ModelNotFoundError(f"Model path {source!r} does not exist; give a local folder or a hub id like 'org/name'.")
    elif not os.path.isfile(os.path.join(path, "config.json")):
        raise ModelNotFoundError(f"Model folder {source!r} has no config.json; give the folder of a Hugging Face model.")
    config = call_translating(  # transformers raises OSError/ValueError with long texts
        lambda: AutoConfig.from_pretrained(
            path if local else source,
            token=token.reveal() if token else None,
            trust_remote_code=trust_remote_code,
        ),
        lambda exc: _config_error(source, exc, token, local),
    )
    return config, local


def _config_error(source: str, exc: Exception, token: Secret | None, local: bool) -> Exception:
    text = redact(str(exc), token)
    lowered = text.lower()
    if not local:
        message = hub_error_message(source, exc, token)
        if message:
            return ModelNotFoundError(message)
    if "trust_remote_code" in lowered or "custom code" in lowered:
        return UnsupportedModelError(
            f"Model {source!r} needs its own Python code to load; read that code, then opt in with "
            "trust_remote_code=True (CLI: --trust-remote-code) for this run."
        )
    if "gated" in lowered or "401" in lowered or "403" in lowered or "restricted" in lowered:
        hint = "the token given has no access: accept the model's terms on its hub page" if token else (
            "set HF_TOKEN, run `huggingface-cli login`, or pass token=..."
        )
        return ModelNotFoundError(f"Model {source!r} is gated or private; {hint}.")
    if not local and ("connect" in lowered or "offline" in lowered or "resolve" in lowered or "network" in lowered):
        return ModelNotFoundError(
            f"Could not reach the Hugging Face Hub for {source!r}; check the network, or download the model "
            "and give its local folder."
        )
    if not local and ("not a valid model identifier" in lowered or "404" in lowered or "repository not found" in lowered
                      or "does not appear to have" in lowered):
        return ModelNotFoundError(f"Model {source!r} was not found on the Hugging Face Hub nor as a local folder; check the name.")
    if "model type" in lowered or "unrecognized" in lowered:
        return UnsupportedModelError(
            f"transformers does not know the architecture of {source!r} ({text.splitlines()[0][:160]}); "
            "upgrade transformers within llm-compressor's pins or use a supported model."
        )
    first = text.strip().splitlines()[0][:200] if text.strip() else type(exc).__name__
    return ModelNotFoundError(f"Could not read the configuration of {source!r}: {first}")


def build_meta_model(config: Any, trust_remote_code: bool):
    """The model's module tree on the meta device: shapes and names, no memory."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise UnsupportedModelError(
                "This model needs its own Python code; read it, then opt in with trust_remote_code=True."
            ) from None
        raise UnsupportedModelError(
            f"{type(config).__name__} is not a causal language model that transformers can build "
            f"(AutoModelForCausalLM refused it); qwodel-nb quantizes causal LMs."
        ) from None
    except Exception as exc:  # an inconsistent config.json makes model classes fail in many ways
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise UnsupportedModelError(
            f"The model cannot be built from its config.json ({type(exc).__name__}: {first}); check that file."
        ) from None


def _read_safetensors_header(path: str) -> dict:
    with open(path, "rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        return json.loads(fh.read(length))


def safetensors_layout(source: str, local: bool, token: Secret | None) -> dict[str, tuple[str, list[int]]] | None:
    """``{tensor name: (dtype, shape)}`` from safetensors headers, or None where there are none."""
    tensors: dict[str, tuple[str, list[int]]] = {}
    if local:
        files = sorted(f for f in os.listdir(source) if f.endswith(".safetensors"))
        if not files:
            return None
        for name in files:
            try:
                header = _read_safetensors_header(os.path.join(source, name))
            except (OSError, ValueError, struct.error):
                return None
            for key, meta in header.items():
                if key != "__metadata__":
                    tensors[key] = (meta["dtype"], meta["shape"])
        return tensors
    try:
        from huggingface_hub import get_safetensors_metadata

        meta = get_safetensors_metadata(source, token=token.reveal() if token else None)
    except Exception:
        return None
    for file_meta in meta.files_metadata.values():
        for key, info in file_meta.tensors.items():
            tensors[key] = (info.dtype, list(info.shape))
    return tensors


def _tensor_bytes(dtype: str, shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n * DTYPE_BYTES.get(dtype, 2)


def decoder_layers(model) -> tuple[str, list]:
    """The name prefix and modules of the repeated decoder layers (the largest ModuleList)."""
    import torch

    best_name, best = "", []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > len(best):
            best_name, best = name, list(module)
    return best_name, best


def inspect_model(source: str, token: Secret | None = None, trust_remote_code: bool = False) -> ModelInfo:
    """Read config, module tree and on-disk sizes of ``source`` without loading any weight."""
    import torch

    config, local = load_config(source, token, trust_remote_code)
    path = os.path.expanduser(source) if local else source
    meta = build_meta_model(config, trust_remote_code)
    dtype = _config_dtype(config)

    linear = [
        LinearLayer(name, module.in_features, module.out_features)
        for name, module in meta.named_modules()
        if isinstance(module, torch.nn.Linear)
    ]
    seen: set[int] = set()
    param_count = 0
    for p in meta.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            param_count += p.numel()

    layout = safetensors_layout(path, local, token)
    if layout:
        weight_bytes = sum(_tensor_bytes(dt, shape) for dt, shape in layout.values())
        stored = {dt for dt, _ in layout.values()}
        float_types = [d for d in ("BF16", "F16", "F32") if d in stored]
        if float_types:
            dtype = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}[float_types[0]]
        bytes_source = "safetensors headers"
    else:
        weight_bytes = param_count * TORCH_DTYPE_BYTES.get(dtype, 2)
        bytes_source = "parameter count x dtype"

    prefix, layers = decoder_layers(meta)
    per_param = TORCH_DTYPE_BYTES.get(dtype, 2)
    largest = max((sum(p.numel() for p in layer.parameters()) * per_param for layer in layers), default=0)

    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    max_pos = None
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(text_config, attr, None)
        if isinstance(value, int) and value > 0:
            max_pos = value
            break

    return ModelInfo(
        source=source,
        is_local=local,
        config=config,
        class_name=type(meta).__name__,
        model_type=getattr(config, "model_type", "unknown"),
        num_layers=int(getattr(text_config, "num_hidden_layers", len(layers)) or len(layers)),
        hidden_size=getattr(text_config, "hidden_size", None),
        max_positions=max_pos,
        dtype=dtype,
        param_count=param_count,
        weight_bytes=weight_bytes,
        weight_bytes_source=bytes_source,
        linear_layers=linear,
        largest_layer_bytes=largest,
        layer_prefix=prefix,
        tied_embeddings=bool(getattr(text_config, "tie_word_embeddings", False)),
        module_names=[name for name, _ in meta.named_modules() if name],
        meta_model=meta,
    )

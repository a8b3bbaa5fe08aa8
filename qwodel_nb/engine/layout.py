"""Which layers are quantized, with which group size, and which AWQ mappings apply.

Rules that keep the output usable (measured on llm-compressor 0.14 and vLLM):

* a layer that AWQ balances must be quantized: ignoring one (Llama's ``down_proj``, say) makes
  llm-compressor's AWQ fail;
* projections that vLLM fuses into one kernel (q/k/v, gate/up) are quantized all or none:
  vLLM refuses a checkpoint that splits them;
* the group size must divide the input columns of every quantized layer; 128 is preferred
  (vLLM's kernels and most published checkpoints use it), then 64, then 32.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import SettingsError, UnsupportedModelError
from .model_info import LinearLayer, ModelInfo
from .settings import SUPPORTED_GROUP_SIZES


def match_name(name: str, pattern: str) -> bool:
    """compressed-tensors' own matching (exact name, or ``re:`` + ``re.match``), imported when first used."""
    from compressed_tensors.utils import match_name as _match

    return _match(name, pattern)

DEFAULT_IGNORE = ("lm_head", "re:.*mlp\\.gate$", "re:.*mlp\\.shared_expert_gate$")
# vLLM's packed modules: shards that must share one quantization decision.
FUSED_SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"), ("w1", "w3"))


@dataclass(frozen=True)
class MappingSupport:
    source: str  # "registry", "dynamic registry" or "default mappings (module names match)"
    mappings: tuple = field(repr=False)
    balance_patterns: tuple[str, ...] = ()
    smooth_patterns: tuple[str, ...] = ()


@dataclass(frozen=True)
class Layout:
    ignore: tuple[str, ...]
    ignore_source: str  # "default" or "user"
    quantized: tuple[str, ...]  # names of the Linear layers that get 4-bit weights
    skipped: tuple[str, ...]  # Linear layers left in 16 bits
    group_size: int
    group_size_reason: str
    mappings: MappingSupport


def user_mapping_support(info: ModelInfo, given: tuple[tuple[str, tuple[str, ...]], ...]) -> MappingSupport:
    """The AWQ mappings the user gave, after checking that every pattern names layers of this model."""
    from llmcompressor.modifiers.transform.awq.mappings import AWQMapping

    linear = [layer.name for layer in info.linear_layers]
    mappings = []
    for smooth, balance in given:
        if not any(match_name(n, smooth) for n in info.module_names):
            raise SettingsError(
                f"AWQ mapping smooth_layer {smooth!r} matches no module of {info.class_name}; "
                f"module names look like {_examples(info.module_names)}."
            )
        for pattern in balance:
            if not any(match_name(n, pattern) for n in linear):
                raise SettingsError(
                    f"AWQ mapping balance layer {pattern!r} matches no Linear layer of {info.class_name}; "
                    f"its Linear layers look like {_examples(linear)}."
                )
        mappings.append(AWQMapping(smooth_layer=smooth, balance_layers=list(balance)))
    return MappingSupport(
        source="your mappings",
        mappings=tuple(mappings),
        balance_patterns=tuple(p for _, balance in given for p in balance),
        smooth_patterns=tuple(smooth for smooth, _ in given),
    )


def _examples(names: list[str], n: int = 3) -> str:
    inner = [name for name in names if ".1." in f".{name}."] or names
    return ", ".join(inner[:n]) or "(none)"


def mapping_support(info: ModelInfo, given: tuple | None = None) -> MappingSupport:
    """The AWQ mappings llm-compressor will use for this model, or a clear error."""
    from llmcompressor.modifiers.transform.awq.dynamic_mappings import AWQ_DYNAMIC_MAPPING_REGISTRY
    from llmcompressor.modifiers.transform.awq.mappings import AWQ_MAPPING_REGISTRY, default_mappings

    if given:
        return user_mapping_support(info, given)
    name = info.class_name
    mappings = None
    source = ""
    if name in AWQ_DYNAMIC_MAPPING_REGISTRY and info.meta_model is not None:
        try:
            mappings = AWQ_DYNAMIC_MAPPING_REGISTRY[name](info.meta_model)
            source = "llm-compressor's dynamic mapping registry"
        except Exception:
            mappings = None
    if mappings is None and name in AWQ_MAPPING_REGISTRY:
        mappings, source = AWQ_MAPPING_REGISTRY[name], "llm-compressor's mapping registry"
    if mappings is None:
        # llm-compressor falls back to Llama-style mappings for unknown classes; accept that
        # only when those mappings really resolve on this model's module names.
        if _defaults_resolve(default_mappings, info.module_names):
            mappings, source = default_mappings, "Llama-style default mappings (module names match)"
        else:
            raise UnsupportedModelError(
                f"llm-compressor 0.14 has no AWQ mappings for {name} (model_type {info.model_type!r}) and its "
                "module names do not follow the Llama layout; give the mappings yourself "
                "(mappings=[{smooth_layer: ..., balance_layers: [...]}], CLI: --mappings FILE) "
                "or use a supported architecture (Llama, Mistral, Qwen2/3, Gemma2/3, Phi3, ...)."
            )
    balance = tuple(p for m in mappings for p in m.balance_layers)
    smooth = tuple(m.smooth_layer for m in mappings)
    return MappingSupport(source=source, mappings=tuple(mappings), balance_patterns=balance, smooth_patterns=smooth)


def _defaults_resolve(mappings, names: list[str]) -> bool:
    for mapping in mappings:
        if not any(match_name(n, mapping.smooth_layer) for n in names):
            return False
        for pattern in mapping.balance_layers:
            if not any(match_name(n, pattern) for n in names):
                return False
    return True


def _is_ignored(name: str, ignore: tuple[str, ...]) -> bool:
    return any(match_name(name, pattern) for pattern in ignore)


def _balanced_layers(info: ModelInfo, support: MappingSupport) -> set[str]:
    """Linear layers that some AWQ mapping scales (v->o skipped where shapes differ, as llm-compressor does)."""
    by_name = {layer.name: layer for layer in info.linear_layers}
    balanced = set()
    for mapping in support.mappings:
        for pattern in mapping.balance_layers:
            for layer in info.linear_layers:
                if not match_name(layer.name, pattern):
                    continue
                if layer.name.endswith(".o_proj") and mapping.smooth_layer.endswith("v_proj$"):
                    v_proj = by_name.get(layer.name[: -len("o_proj")] + "v_proj")
                    if v_proj is not None and v_proj.out_features != layer.in_features:
                        continue  # grouped-query attention: llm-compressor skips v->o
                balanced.add(layer.name)
    return balanced


def _check_ignore(info: ModelInfo, ignore: tuple[str, ...], balanced: set[str]) -> None:
    ignored = {layer.name for layer in info.linear_layers if _is_ignored(layer.name, ignore)}
    clash = sorted(ignored & balanced)
    if clash:
        raise SettingsError(
            f"'ignore' leaves {clash[0]} unquantized{f' (and {len(clash) - 1} more)' if len(clash) > 1 else ''}, "
            "but AWQ balances that layer and llm-compressor 0.14 fails when it is ignored; remove it from 'ignore'."
        )
    names = {layer.name for layer in info.linear_layers}
    for group in FUSED_SIBLINGS:
        parents = {n.rsplit(".", 1)[0] for n in names if n.rsplit(".", 1)[-1] in group}
        for parent in sorted(parents):
            members = [f"{parent}.{s}" for s in group if f"{parent}.{s}" in names]
            state = {m in ignored for m in members}
            if len(state) > 1:
                kept = [m for m in members if m not in ignored]
                raise SettingsError(
                    f"'ignore' splits the fused projections of {parent} ({', '.join(s.rsplit('.', 1)[-1] for s in members)}): "
                    f"vLLM fuses them into one kernel and refuses a mixed checkpoint; ignore {', '.join(kept)} too, or none of them."
                )


def choose_group_size(quantized: list[LinearLayer], requested: int | None) -> tuple[int, str]:
    """The group size to use and the reason, or an error naming a layer no size divides."""
    def offenders(g: int) -> list[LinearLayer]:
        return [layer for layer in quantized if layer.in_features % g]

    if requested is not None:
        bad = offenders(requested)
        if bad:
            fits = [g for g in SUPPORTED_GROUP_SIZES if not offenders(g)]
            hint = f"use group_size={fits[0]}" if fits else "ignore that layer"
            raise SettingsError(
                f"group_size {requested} does not divide the {bad[0].in_features} input columns of {bad[0].name}"
                f"{f' (and {len(bad) - 1} more layers)' if len(bad) > 1 else ''}; {hint}, or leave group_size unset."
            )
        return requested, "set by you"
    first_bad: LinearLayer | None = None
    for g in SUPPORTED_GROUP_SIZES:
        bad = offenders(g)
        if not bad:
            if first_bad is None:
                return g, f"{g} divides the input columns of every quantized layer"
            return g, (
                f"{SUPPORTED_GROUP_SIZES[0]} does not divide the {first_bad.in_features} input columns of "
                f"{first_bad.name}; {g} is the largest size that divides every quantized layer"
            )
        if first_bad is None:
            first_bad = bad[0]
    last = offenders(SUPPORTED_GROUP_SIZES[-1])[0]
    raise UnsupportedModelError(
        f"No supported group size ({', '.join(map(str, SUPPORTED_GROUP_SIZES))}) divides the {last.in_features} "
        f"input columns of {last.name}; vLLM's W4A16 kernels cannot serve that layer in 4 bits."
    )


def plan_layout(info: ModelInfo, ignore: tuple[str, ...] | None, group_size: int | None,
                mappings: tuple | None = None) -> Layout:
    """Decide ignore list, quantized layers and group size for ``info``; raise on unsafe choices."""
    support = mapping_support(info, mappings)
    user = ignore is not None
    ignore = tuple(ignore) if user else DEFAULT_IGNORE
    balanced = _balanced_layers(info, support)
    _check_ignore(info, ignore, balanced)
    quantized = [layer for layer in info.linear_layers if not _is_ignored(layer.name, ignore)]
    if not quantized:
        raise SettingsError("'ignore' leaves no Linear layer to quantize; narrow the ignore list.")
    skipped = tuple(layer.name for layer in info.linear_layers if _is_ignored(layer.name, ignore))
    g, reason = choose_group_size(quantized, group_size)
    return Layout(
        ignore=ignore,
        ignore_source="user" if user else "default",
        quantized=tuple(layer.name for layer in quantized),
        skipped=skipped,
        group_size=g,
        group_size_reason=reason,
        mappings=support,
    )

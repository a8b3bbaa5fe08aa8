"""The benchmark scripts run end to end on the tiny CPU case (a smoke test: no timing is asserted)."""

from __future__ import annotations

import json
import math
import os

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")


@pytest.fixture
def bench_modules(monkeypatch):
    monkeypatch.syspath_prepend(BENCH)
    import awq_quality
    import awq_speed

    return awq_speed, awq_quality


def test_speed_benchmark_tiny_cpu(bench_modules, tmp_path):
    awq_speed, _ = bench_modules
    summary = awq_speed.main(["--case", "tiny-cpu", "--results-dir", str(tmp_path), "--workdir", str(tmp_path)])
    saved = json.loads((tmp_path / "awq_speed_tiny-cpu.json").read_text())
    assert saved["summary"]["case"] == "tiny-cpu" and len(saved["runs"]) == 3
    agreement = summary["agreement"]
    assert agreement["mappings"] > 0 and agreement["same_share"] == 1.0  # float32: the fast search is exact
    assert summary["perplexity"]["stock"] == pytest.approx(summary["perplexity"]["fast"], rel=1e-6)
    assert summary["search"]["stock_fallbacks"] == []
    assert set(summary["smoothing_s"]) == {"stock", "fast", "fast-nocapture"}
    assert 0.0 < summary["capture_share_max"] < 0.5  # measured inside the run, and part of it
    assert "AWQ smoothing step" in awq_speed.markdown(summary)
    # RSS in a long-lived process may not rise above its baseline at all: no ratio then, and no crash
    assert summary["peak_ratio"] is None or summary["peak_ratio"] > 0
    assert "peak fast/stock n/a" in awq_speed.markdown({**summary, "peak_ratio": None})


def test_speed_benchmark_warms_up_and_compares_eager_attention(bench_modules, tmp_path):
    """--warmup runs each variant once untimed; fast-eager is the fast search with fused attention
    forced off (on a CPU it is off anyway, so both keep stock's choices); the two placement
    variants swap where the pipeline keeps the layer inputs (on a CPU, the CPU for all);
    fast-whole-candidates makes the CPU's candidate weights many points per call, as before the pieces."""
    import json

    awq_speed, _ = bench_modules
    variants = ["stock", "fast", "fast-eager", "fast-cpu-activations", "stock-gpu-activations", "fast-whole-candidates"]
    summary = awq_speed.main(["--case", "tiny-cpu", "--samples", "8", "--seq-len", "64", "--batch-size", "4",
                              "--variants", ",".join(variants), "--warmup", "--no-save",
                              "--results-dir", str(tmp_path), "--workdir", str(tmp_path)])
    runs = json.loads((tmp_path / "awq_speed_tiny-cpu.json").read_text())["runs"]
    assert [r["variant"] for r in runs] == variants  # the warm-up runs are not kept
    assert not any(r["activations_on_device"] for r in runs)
    assert summary["warmup"] is True and summary["speedup_fused_attention_awq"] > 0
    assert summary["agreement_eager"]["same_share"] == 1.0
    assert summary["search"]["fused_attention"] == 0  # a CPU keeps eager attention by default
    assert summary["speedup_activations_fast_awq"] > 0 and summary["speedup_awq_same_placement"] > 0
    assert summary["agreement_stock_gpu_activations"]["same_share"] == 1.0
    assert summary["agreement_stock_gpu_activations"]["max_curve_rel_diff"] == 0.0  # stock, run twice alike
    text = awq_speed.markdown(summary)
    assert "after an untimed warm-up run of each" in text and "Fused causal attention" in text
    assert "Layer inputs on the GPU instead of the CPU" in text and "Stock with its layer inputs on the GPU" in text
    # candidates made many points per call, as before: the same values, so the same losses as fast's
    assert summary["speedup_pieces_awq"] > 0 and summary["agreement_whole_candidates"]["same_share"] == 1.0
    assert summary["agreement_whole_candidates"]["max_curve_rel_diff"] == 0.0
    assert "Candidates in cache-sized pieces" in text


def test_speed_benchmark_compares_token_screening(bench_modules, tmp_path):
    """32 x 128 tokens: enough for the fast search to screen on a CPU (its default there)."""
    awq_speed, _ = bench_modules
    summary = awq_speed.main(["--case", "tiny-cpu", "--samples", "32", "--seq-len", "128", "--variants",
                              "stock,fast,fast-unscreened,fast-large-cpu-passes", "--no-save", "--results-dir",
                              str(tmp_path), "--workdir", str(tmp_path)])
    assert summary["screening_compared"] == ["fast", "fast-unscreened"]
    found = summary["search_screened"]
    assert found["screened"] > 0 and 0 < found["screened_points_confirmed"] < found["screened_points"]
    assert summary["agreement_unscreened"]["same_share"] == 1.0  # without screening: stock's choices exactly
    assert summary["agreement"]["points_compared"] < sum(20 for _ in range(summary["agreement"]["mappings"]))
    assert "Token screening (fast vs fast-unscreened)" in awq_speed.markdown(summary)
    # batches of 8 x 128 tokens: 2 grid points a pass, 4 with the former 4,096-token floor; the same losses
    larger = summary["agreement_large_cpu_passes"]
    assert larger["same_share"] == 1.0 and larger["max_curve_rel_diff"] == 0.0
    assert "Grid-batched passes of up to 2,048 tokens on a CPU" in awq_speed.markdown(summary)


def test_screening_probe_replays_its_rules(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(BENCH)
    import awq_screening_probe

    result = awq_screening_probe.main(["--case", "tiny-cpu", "--samples", "16", "--seq-len", "64",
                                       "--results-dir", str(tmp_path), "--workdir", str(tmp_path)])
    saved = tmp_path / "awq_screening_probe_tiny-cpu.json"
    stored = json.loads(saved.read_text())
    assert len(stored["mappings"]) > 0 and len(stored["mappings"][0]["per_sample"][0]) == 16
    rows = {(t["rows"], t["keep"], t["z"]): t for t in result["replay"]}
    # more allowance never confirms fewer points, and keeping points costs forward work
    assert rows[(2, 3, 3.0)]["mean_confirmed"] >= rows[(2, 3, 0.0)]["mean_confirmed"] >= 3
    assert rows[(4, 3, 0.0)]["work_points"] > rows[(2, 3, 0.0)]["work_points"]
    again = awq_screening_probe.main(["--replay", str(saved)])  # from the stored errors, nothing run
    assert again["replay"] == result["replay"]


def test_quality_benchmark_tiny_cpu(bench_modules, tmp_path):
    _, awq_quality = bench_modules
    table = awq_quality.main(["--case", "tiny-cpu", "--sizes", "8", "--seq-len", "64",
                              "--rows", "unquantized,rtn,stock-awq,fast,fast+search",
                              "--results-dir", str(tmp_path), "--workdir", str(tmp_path)])
    rows = table["sizes"][8]
    assert rows["fast"]["perplexity"] == pytest.approx(rows["stock-awq"]["perplexity"], rel=1e-6)
    assert rows["fast+search"]["clip_s"] > 0
    # the demo model, measured inside its 128-token training context, barely notices 4-bit weights
    unquantized, rtn = (table["baselines"][k]["perplexity"] for k in ("unquantized", "rtn"))
    assert table["seq_len"] == 64 and rtn == pytest.approx(unquantized, rel=1e-2)
    assert (tmp_path / "awq_quality_tiny-cpu.json").exists()
    assert "| 8 | fast+search |" in awq_quality.markdown(table)
    # the same choices as stock: the same loss in every held-out window, so no difference at all
    same = rows["fast"]["vs_stock"]
    assert same["rel"] == pytest.approx(0.0, abs=1e-6) and same["verdict"] == "within noise"
    assert same["windows"] == len(rows["stock-awq"]["heldout_windows"]) > 1


def test_paired_bootstrap_against_stock(bench_modules):
    _, awq_quality = bench_modules
    stock = [(100.0 + 10 * (i % 5), 50) for i in range(40)]
    better = [(nll - 1.0, n) for nll, n in stock]  # lower in every window
    result = awq_quality.against_stock(better, stock)
    assert result["verdict"] == "better" and result["ci95"][0] <= result["rel"] <= result["ci95"][1] < 0
    assert result["rel"] == pytest.approx(math.expm1(-40 / 2000))
    # up in half the windows and down in the other half by more: no side is clear
    mixed = [(nll + (3.0 if i % 2 else -3.2), n) for i, (nll, n) in enumerate(stock)]
    noisy = awq_quality.against_stock(mixed, stock)
    assert noisy["verdict"] == "within noise" and noisy["ci95"][0] < 0 < noisy["ci95"][1]
    assert awq_quality.against_stock([(nll + 0.5, n) for nll, n in stock], stock)["verdict"] == "worse"
    with pytest.raises(ValueError, match="different held-out windows"):
        awq_quality.against_stock(stock[:-1], stock)


def test_profile_sorts_the_oneshot_time_by_kind_of_work(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(BENCH)
    import awq_profile

    result = awq_profile.main(["--case", "tiny-cpu", "--results-dir", str(tmp_path), "--workdir", str(tmp_path)])
    assert [r["variant"] for r in result["runs"]] == ["stock", "fast"]
    for run in result["runs"]:
        assert run["by_category_s"]["gemm"] > 0 and run["operator_s"] == pytest.approx(sum(run["by_category_s"].values()))
        assert run["top"] and all(t["seconds"] > 0 for t in run["top"])
    assert awq_profile.category("aten::bmm") == "gemm"
    assert awq_profile.category("void at::native::reduce_kernel<MaxNanFunctor>") == "reduction"
    assert awq_profile.category("Memcpy HtoD (Pageable -> Device)") == "copy"
    assert "| **sum** |" in awq_profile.markdown(result)
    assert (tmp_path / "awq_profile_tiny-cpu.json").exists()


def test_tinytext_model_is_trained_on_the_pool_text(bench_modules, monkeypatch, tmp_path):
    """The real-text tiny model: its tokenizer and weights come from the calibration pool's paragraphs."""
    import argparse

    from transformers import AutoConfig, AutoTokenizer

    awq_speed, _ = bench_modules
    monkeypatch.setattr(awq_speed, "TINYTEXT_STEPS", 2)
    data = tmp_path / "data"
    data.mkdir()
    pool = ["Quixotic zephyrs vex the jumbled pharaoh gazebo."] * 40 + ["A plain sentence about licences."] * 40
    (data / "bench_calibration.txt").write_text("\n\n".join(pool))
    args = argparse.Namespace(case="tinytext-cpu", data=str(data))
    folder = awq_speed.model_folder(args, str(tmp_path))
    assert folder.endswith("tinytext-2")  # TINYTEXT_STEPS, as no --train-steps was given
    config = AutoConfig.from_pretrained(folder)
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers) == (256, 768, 4)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    # a vocabulary learned from the pool: its repeated words are single tokens
    assert len(tokenizer("Quixotic zephyrs", add_special_tokens=False)["input_ids"]) <= 3
    assert awq_speed.model_folder(args, str(tmp_path)) == folder  # built once
    args.train_steps = 3  # --train-steps
    assert awq_speed.model_folder(args, str(tmp_path)).endswith("tinytext-3")
    assert awq_speed.eval_window(args) == 128


def test_gemma_tokenizer_is_the_bpe_its_gguf_scores_describe(bench_modules, tmp_path):
    """offline_gemma rebuilds the GGUF vocabulary as a BPE: merges ranked by the merged token's id,
    bytes for what the vocabulary lacks, control tokens special (a small GGUF file written here)."""
    from gguf import GGUFWriter

    import offline_gemma

    tokens = ["<pad>", "<eos>", "<bos>", "<unk>", "\n\n"] + [f"<0x{i:02X}>" for i in range(256)]
    tokens += ["\u2581", "c", "a", "p", "i", "t", "l", "o", "f", "\u2581c", "ap", "it", "al", "\u2581cap", "ital",
               "\u2581capital", "\u2581o", "\u2581of", "ca"]
    kinds = [3, 3, 3, 2, 4] + [6] * 256 + [1] * (len(tokens) - 261)
    path = str(tmp_path / "vocab.gguf")
    writer = GGUFWriter(path, "gemma3")
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([-float(i) for i in range(len(tokens))])  # ranks, as in the real file
    writer.add_token_types(kinds)
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(1)
    writer.add_pad_token_id(0)
    writer.add_unk_token_id(3)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    tokenizer = offline_gemma.bpe_tokenizer(path)
    ids = tokenizer("a capital of\n\ncapé")["input_ids"]
    # whole words where the vocabulary has them ("ap" outranks "ca", so "cap" is c + ap), the
    # user-defined "\n\n" kept whole, and UTF-8 bytes for the unknown "é"
    assert tokenizer.convert_ids_to_tokens(ids) == [
        "<bos>", "a", "\u2581capital", "\u2581of", "\n\n", "c", "ap", "<0xC3>", "<0xA9>"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a capital of\n\ncapé"
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id) == (2, 1, 0, 3)


def test_stage_timers_split_the_awq_phase_and_come_off_again(bench_modules, tmp_path, monkeypatch):
    from llmcompressor.pipelines.sequential import helpers

    from qwodel_nb.engine import awq_capture, awq_search

    monkeypatch.syspath_prepend(BENCH)
    import awq_stages

    before = (helpers.Subgraph.forward, awq_capture.search_best_scales, awq_search._Passes.losses)
    result = awq_stages.main(["--case", "tiny-cpu", "--results-dir", str(tmp_path), "--workdir", str(tmp_path)])
    stages = result["timed"][0]["stages"]
    layers = 4 + 1  # the tiny model's decoder layers and the rest of the model after them
    assert stages["pipeline: layer passes, calibration (AWQ's hooks on)"]["calls"] == layers
    assert stages["pipeline: layer passes, propagation"]["calls"] == layers
    assert stages["  search, LlamaMLP parents"]["calls"] == 4  # one MLP mapping per layer
    smoothing = stages["smoothing step (all mappings)"]["s"]
    searched = sum(v["s"] for k, v in stages.items() if k.startswith("  search, "))
    assert 0 < searched <= smoothing <= result["timed"][0]["awq_s"]
    assert (tmp_path / "cprofile_tiny-cpu_fast_tottime.txt").read_text().count("tottime") >= 1
    assert json.loads((tmp_path / "awq_stages_tiny-cpu_fast.json").read_text())["plain_awq_s"]
    after = (helpers.Subgraph.forward, awq_capture.search_best_scales, awq_search._Passes.losses)
    assert after == before  # the timers came off
    assert "_compute_layer_means" not in vars(awq_capture.AWQModifier)  # inherited from llm-compressor's class again
    # the fast variants' weight pass (qwodel's QuantizationModifier) is timed too
    assert stages["  of which: weight qparams of every layer"]["calls"] == 1


def test_capture_cost_counts_every_event(monkeypatch):
    monkeypatch.syspath_prepend(BENCH)
    import capture_cost

    result = capture_cost.main(["--mappings", "3", "--repeats", "2"])
    assert result["events"] == 2 * 3 * (1 + 20 + 1)  # per mapping: started, 20 grid points, finished
    assert 0 < result["best_capture_ms"] <= result["best_wall_ms"]


def test_cpu_candidates_probe_times_three_ways_with_the_same_values(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(BENCH)
    import cpu_candidates_probe

    result = cpu_candidates_probe.main(["--out", str(tmp_path / "probe.json"), "--repeats", "1", "--shapes", "1"])
    (row,) = result["rows"]
    assert row["identical"] and row["identical_in_place"]
    assert row["whole_s"] > 0 and row["pieces_s"] > 0 and row["in_place_s"] > 0
    assert (tmp_path / "probe.json").is_file()


def test_cpu_attention_probe_times_whole_and_chunked_calls_with_the_same_values(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(BENCH)
    import cpu_attention_probe

    result = cpu_attention_probe.main(["--out", str(tmp_path / "attention.json"), "--repeats", "1", "--passes", "1"])
    rows = result["rows"]  # the first pass shape (8 samples of 256 tokens), both models, both dtypes
    assert [(r["model"], r["dtype"]) for r in rows] == [(m, d) for m, *_ in cpu_attention_probe.MODELS
                                                        for d in ("float32", "bfloat16 autocast")]
    assert all(r["identical"] for r in rows)
    assert rows[0]["chosen_rows"] == 3 and set(rows[0]["rows_s"]) == {"1", "2", "3", "4", "8"}
    assert all(r["whole_s"] > 0 and r["faults_whole"] >= 0 for r in rows)
    assert (tmp_path / "attention.json").is_file()

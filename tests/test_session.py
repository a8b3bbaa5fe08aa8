"""Session: real AWQ runs on a tiny Llama, events, statistics, state errors, cancel, evaluation."""

from __future__ import annotations

import json
import math
import os
import threading

import pytest
import torch

from qwodel_nb import CalibrationDataError, CancelledError, ModelNotFoundError, Session, StateError
from qwodel_nb.engine import progress as ev
from qwodel_nb.engine.stats import Stats

RUN = dict(num_samples=8, seq_len=48, batch_size=2)


def _expected_mappings(model_dir: str) -> dict[int, int]:
    """Mappings AWQ resolves per layer: q/k/v, v->o only without grouped-query attention, gate/up, down."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model_dir)
    per_layer = 3 + (cfg.num_key_value_heads == cfg.num_attention_heads)
    return {i: per_layer for i in range(cfg.num_hidden_layers)}


@pytest.fixture(scope="module")
def finished(tiny_llama, tmp_path_factory, calibration_texts, heldout_texts):
    """One real run shared by the read-only tests below: (session, events, output folder)."""
    out = tmp_path_factory.mktemp("session") / "out"
    events: list[ev.Event] = []
    s = Session(model=tiny_llama, output=str(out), calibration_dataset=calibration_texts, **RUN)
    s.run(callbacks=[events.append], evaluate=True, eval_text=heldout_texts)
    return s, events, str(out)


def test_one_record_per_mapping_with_consistent_losses(finished, tiny_llama):
    s, _, _ = finished
    stats = s.result.stats
    per_layer = {}
    for r in stats:
        per_layer[r.layer] = per_layer.get(r.layer, 0) + 1
    assert per_layer == _expected_mappings(tiny_llama)
    kinds = {r.kind for r in stats}
    assert kinds == {"attention input", "MLP input", "MLP down projection"}
    for r in stats:
        assert len(r.grid_losses) == 20
        assert r.rtn_loss == r.grid_losses[0]  # the first grid point is identity scaling
        assert r.best_loss == min(r.grid_losses)
        assert r.best_loss <= r.rtn_loss
        best = r.grid_losses.index(r.best_loss)
        assert (r.best_ratio, r.duo_scaling) == (r.grid_ratios[best], r.grid_duo[best])
        assert r.scales is not None and r.scales.shape == r.activation_means.shape
        assert r.scale_summary["min"] <= r.scale_summary["q50"] <= r.scale_summary["max"]


def test_recorded_scales_are_the_ones_applied(finished, tiny_llama):
    """The saved RMSNorm before gate/up equals the original divided by the recorded scales."""
    from transformers import AutoModelForCausalLM

    s, _, out = finished
    record = next(r for r in s.result.stats if r.smooth_layer == "model.layers.1.post_attention_layernorm")
    original = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    saved = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    before = original.model.layers[1].post_attention_layernorm.weight.detach()
    after = saved.model.layers[1].post_attention_layernorm.weight.detach()
    expected = before / torch.from_numpy(record.scales).float()
    # float32 compute, bfloat16 on disk: equal to bf16 precision
    assert torch.allclose(after, expected.to(torch.bfloat16).float(), rtol=1e-2, atol=1e-3)
    assert not torch.allclose(after, before, rtol=1e-3)


def test_events_arrive_in_order(finished, tiny_llama):
    s, events, out = finished
    names = [type(e).__name__ for e in events]
    phases = [e.phase for e in events if isinstance(e, ev.PhaseStarted)]
    assert phases == ["calibration_data", "load_model", "awq", "save"]
    assert names[-1] == "RunFinished" and events[-1].output_path == out
    assert all(a.elapsed_s <= b.elapsed_s for a, b in zip(events, events[1:]))

    expected = _expected_mappings(tiny_llama)
    layers = [e for e in events if isinstance(e, ev.LayerStarted)]
    assert [e.layer for e in layers] == sorted(expected) and all(e.num_layers == len(expected) for e in layers)
    # Inside each layer: MappingStarted, 20 GridPoints, MappingFinished, for each mapping in turn.
    current = None
    for e in events:
        if isinstance(e, ev.LayerStarted):
            current, mapping, points = e.layer, -1, 0
        elif isinstance(e, ev.MappingStarted):
            assert e.layer == current and e.mapping == mapping + 1 and e.num_mappings == expected[current]
            mapping, points = e.mapping, 0
        elif isinstance(e, ev.GridPoint):
            assert (e.layer, e.mapping, e.point, e.num_points) == (current, mapping, points, 20)
            assert e.best_loss <= e.loss or math.isclose(e.best_loss, e.loss)
            points += 1
        elif isinstance(e, ev.MappingFinished):
            assert points == 20
        elif isinstance(e, ev.LayerFinished):
            assert mapping + 1 == expected[current]
    grid = [e for e in events if isinstance(e, ev.GridPoint)]
    assert len(grid) == 20 * sum(expected.values())
    assert grid[-1].eta_s == pytest.approx(0.0, abs=1e-6)


def test_progress_bar_reaches_100_percent(finished):
    from qwodel_nb.progress_bar import ProgressBar

    _, events, _ = finished
    bar = ProgressBar(num_layers=2)
    seen = []
    for e in events:
        bar(e)
        seen.append(bar.bar.n)
    assert all(a <= b for a, b in zip(seen, seen[1:]))  # never goes back
    assert bar.bar.n == pytest.approx(2.0)
    bar.close()


def test_stats_export_and_stats_file(finished):
    s, _, out = finished
    stats = s.result.stats
    on_disk = Stats.from_json(os.path.join(out, "stats.json"))
    assert [r.smooth_layer for r in on_disk] == [r.smooth_layer for r in stats]
    assert [r.best_loss for r in on_disk] == [r.best_loss for r in stats]
    records = stats.to_records()
    assert records[0]["grid"][0]["duo_scaling"] is False
    again = Stats.from_json(stats.to_json(vectors=True))
    assert again[0].scales.tolist() == pytest.approx(stats[0].scales.tolist())
    csv_text = stats.to_csv()
    assert csv_text.splitlines()[0].startswith("index,layer,kind,smooth_layer") and len(csv_text.splitlines()) == len(stats) + 1
    frame = stats.to_dataframe()
    assert len(frame) == len(stats) and {"best_ratio", "scale_q50", "act_max"} <= set(frame.columns)


def test_result_numbers_and_views(finished, heldout_texts):
    s, _, out = finished
    r = s.result
    assert s.state == "done"
    assert {"calibration_data_s", "load_model_s", "awq_s", "save_s", "total_s"} <= set(r.timings)
    assert r.size_after_bytes < r.size_before_bytes and r.compression_ratio > 1
    assert r.peak_gpu_bytes is None and r.peak_rss_bytes > 0
    assert repr(out) in r.vllm_snippet
    assert set(r.perplexity) == {"unquantized", "quantized"} and all(math.isfinite(v) for v in r.perplexity.values())
    assert r.perplexity["quantized"] < 1.5 * r.perplexity["unquantized"]
    assert len(r.layer_errors) == 2 and all(0 <= e < 1 for e in r.layer_errors)
    html = r._repr_html_()
    assert "Serve it with vLLM" in html and "perplexity" in html
    assert "compressed-tensors" in str(r)
    summary = json.load(open(os.path.join(out, "qwodel_summary.json")))
    assert summary["awq"]["mappings"] == len(r.stats)


def test_plot_overview(finished):
    import matplotlib.figure

    s, _, _ = finished
    for kind in ("overview", "scales", "ratios", "losses", "grid"):
        assert isinstance(s.plot(kind), matplotlib.figure.Figure)
    with pytest.raises(StateError, match="unknown"):
        s.plot("pie")


def test_vram_plan_preview_before_running(tiny_llama_odd, calibration_texts):
    s = Session(model=tiny_llama_odd, calibration_dataset=calibration_texts, num_samples=6, seq_len=32)
    assert s.state == "configured"
    vram = s.vram()
    assert "No GPU" in str(vram) and "CPU settings" in str(vram) and "No GPU" in vram._repr_html_()
    plan = s.plan()
    assert s.state == "planned"
    text = str(plan)
    assert "group size 32" in text and "6 (set by you)" in text
    html = plan._repr_html_()
    assert "LlamaForCausalLM" in html and "96 input columns" in html
    preview = s.preview(3)
    assert len(preview.samples) == 3 and preview.summary["samples"] == 6
    assert all(smp.num_tokens <= 32 for smp in preview.calibration.samples)
    assert any(smp.truncated for smp in preview.calibration.samples)
    assert "truncated" in str(preview) and "<pre>" in preview._repr_html_()
    with pytest.raises(StateError, match="run"):
        s.plot()


def test_change_settings_after_a_run(finished):
    s, _, _ = finished
    # A copy of the finished session's settings, so the shared fixture stays as it is.
    other = Session(**{k: v for k, v in s.settings.public_dict().items() if k in ("model", "output")},
                    calibration_dataset=list(s.settings.calibration_dataset))
    other.configure(num_samples=4, seq_len=40)
    assert other.state == "configured"
    plan = other.plan()
    assert plan.num_samples == 4 and plan.seq_len == 40
    # The output now holds the first run: the plan says that run() would refuse it, without refusing to plan.
    assert "not empty" in plan.output_note and "not empty" in str(plan)
    other.configure(overwrite=True)
    assert other.plan().output_note is None


def test_missing_model_fails_and_session_recovers(tiny_llama, tmp_path, calibration_texts):
    s = Session(model=str(tmp_path / "nowhere"), output=str(tmp_path / "out"), calibration_dataset=calibration_texts, **RUN)
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        s.run(progress=False)
    assert s.state == "failed" and "does not exist" in s.status()
    s.configure(model=tiny_llama, calibration_dataset=str(tmp_path / "missing.txt"))
    with pytest.raises(CalibrationDataError):
        s.run(progress=False)
    assert s.state == "failed"
    s.configure(calibration_dataset=calibration_texts)
    s.run(progress=False)
    assert s.state == "done" and os.path.isdir(tmp_path / "out")


def test_concurrent_run_and_configure_are_refused_then_cancel(tiny_llama, tmp_path, calibration_texts):
    """While a run is going, run() and configure() fail clearly; cancel() stops it, nothing is written."""
    s = Session(model=tiny_llama, output=str(tmp_path / "out"), calibration_dataset=calibration_texts, **RUN)
    started, release = threading.Event(), threading.Event()
    outcome = {}

    def hold_at_first_grid_point(event):
        if isinstance(event, ev.GridPoint) and not started.is_set():
            started.set()
            release.wait(60)

    def target():
        try:
            s.run(callbacks=[hold_at_first_grid_point], progress=False)
            outcome["result"] = "done"
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertions below
            outcome["result"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    assert started.wait(120)
    assert s.state == "running"
    with pytest.raises(StateError, match="already going"):
        s.run(progress=False)
    with pytest.raises(StateError, match="cancel"):
        s.configure(num_samples=2)
    s.cancel()
    release.set()
    thread.join(120)
    assert isinstance(outcome["result"], CancelledError)
    assert s.state == "cancelled"
    assert os.listdir(tmp_path) == []  # no output, no staging folder
    s.run(progress=False)  # usable again
    assert s.state == "done" and (tmp_path / "out" / "model.safetensors").is_file()


def test_plan_for_a_model_too_big_for_the_gpu(tiny_llama):
    """Simulated headroom: a GPU with less free memory than the weights need -> layer-by-layer onloading."""
    from qwodel_nb.engine import autoconfig
    from qwodel_nb.engine.model_info import inspect_model
    from qwodel_nb.engine.plan import gpu_headroom
    from qwodel_nb.engine.vram import GpuInfo, VramReport

    info = inspect_model(tiny_llama)
    gib = 1024**3
    small = VramReport(gpus=(GpuInfo(0, 0, "Simulated T4", 15 * gib, 14 * gib, gib),))
    headroom, reason, placement = gpu_headroom(small, info, "cuda", "bfloat16")
    assert placement == "weights on CPU, one layer at a time on GPU 0"
    assert "too little" in reason and "onloaded one at a time" in reason
    assert headroom == gib - info.largest_layer_bytes
    assert autoconfig.table_row(headroom)[1] == (1, 2048, 32)

    roomy = VramReport(gpus=(GpuInfo(0, 0, "Simulated H100", 80 * gib, 0, 80 * gib),))
    headroom, reason, placement = gpu_headroom(roomy, info, "cuda", "bfloat16")
    assert placement == "whole model on GPU 0" and headroom == 80 * gib - info.param_count * 2
    assert autoconfig.table_row(headroom)[1] == (16, 8192, 256)


def test_evaluate_without_heldout_text_fails_before_running(tiny_llama, tmp_path, calibration_texts):
    """In-memory calibration has no validation split: run(evaluate=True) says so before any AWQ work."""
    events = []
    s = Session(model=tiny_llama, output=str(tmp_path / "out"), calibration_dataset=calibration_texts, **RUN)
    with pytest.raises(CalibrationDataError, match="No held-out text"):
        s.run(callbacks=[events.append], evaluate=True, progress=False)
    assert events == [] and not (tmp_path / "out").exists() and s.state == "failed"


def test_saved_recipe_loads_in_plain_llmcompressor(finished):
    """The statistics subclass keeps the name AWQModifier: the recipe resolves to llm-compressor's own classes."""
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform.awq import AWQModifier
    from llmcompressor.recipe import Recipe

    _, _, out = finished
    text = open(os.path.join(out, "recipe.yaml")).read()
    assert "qwodel" not in text.lower()
    recipe = Recipe.create_instance(os.path.join(out, "recipe.yaml"))
    assert [type(m) for m in recipe.modifiers] == [AWQModifier, QuantizationModifier]

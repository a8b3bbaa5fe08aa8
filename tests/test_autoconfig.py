"""The VRAM headroom table, user values over the table, and the caps with their reasons."""

from __future__ import annotations

import pytest

from qwodel_nb.engine.autoconfig import CPU_ROW, GIB, HEADROOM_TABLE, Choice, resolve, table_row

ROW_LT4 = (1, 2048, 32)
ROW_4_8 = (2, 4096, 64)
ROW_8_16 = (4, 4096, 128)
ROW_16_24 = (8, 8192, 128)
ROW_GT24 = (16, 8192, 256)


def test_table_is_the_documented_contract():
    assert HEADROOM_TABLE == (
        (4, *ROW_LT4),
        (8, *ROW_4_8),
        (16, *ROW_8_16),
        (24, *ROW_16_24),
        (None, *ROW_GT24),
    )
    assert CPU_ROW == (1, 512, 32)
    assert GIB == 2**30


@pytest.mark.parametrize(
    "headroom, row, label_range",
    [
        (0, ROW_LT4, "< 4 GB"),
        (1, ROW_LT4, "< 4 GB"),
        (4 * GIB - 1, ROW_LT4, "< 4 GB"),
        (4 * GIB, ROW_4_8, "4-8 GB"),
        (4 * GIB + 1, ROW_4_8, "4-8 GB"),
        (8 * GIB - 1, ROW_4_8, "4-8 GB"),
        (8 * GIB, ROW_8_16, "8-16 GB"),
        (8 * GIB + 1, ROW_8_16, "8-16 GB"),
        (16 * GIB - 1, ROW_8_16, "8-16 GB"),
        (16 * GIB, ROW_16_24, "16-24 GB"),
        (16 * GIB + 1, ROW_16_24, "16-24 GB"),
        (24 * GIB - 1, ROW_16_24, "16-24 GB"),
        (24 * GIB, ROW_GT24, "> 24 GB"),
        (24 * GIB + 1, ROW_GT24, "> 24 GB"),
        (141 * GIB, ROW_GT24, "> 24 GB"),
    ],
)
def test_every_row_boundary(headroom, row, label_range):
    """Each bound is exclusive above: exactly 4 GiB already belongs to the 4-8 row."""
    label, values = table_row(headroom)
    assert values == row
    assert label.startswith("headroom ")
    assert label.endswith(f"is {label_range}")


def test_row_label_shows_headroom_in_gib():
    assert table_row(10 * GIB)[0] == "headroom 10.0 GB is 8-16 GB"
    assert table_row(int(2.5 * GIB))[0] == "headroom 2.5 GB is < 4 GB"
    assert table_row(30 * GIB)[0] == "headroom 30.0 GB is > 24 GB"


def test_row_label_just_below_a_bound_does_not_contradict_itself():
    label, _ = table_row(4 * GIB - 5 * 2**20)  # 3.995 GiB
    assert label != "headroom 4.0 GB is < 4 GB"


def test_no_gpu_is_the_cpu_row():
    label, values = table_row(None)
    assert values == CPU_ROW
    assert "no GPU" in label and "CPU" in label


@pytest.mark.parametrize(
    "headroom, row",
    [(None, CPU_ROW), (2 * GIB, ROW_LT4), (6 * GIB, ROW_4_8), (12 * GIB, ROW_8_16), (20 * GIB, ROW_16_24), (80 * GIB, ROW_GT24)],
)
def test_resolve_all_auto_uses_the_row(headroom, row):
    cfg = resolve(headroom, None, None, None)
    assert (cfg.batch_size.value, cfg.seq_len.value, cfg.num_samples.value) == row
    for choice in (cfg.batch_size, cfg.seq_len, cfg.num_samples):
        assert choice.source == "auto"
        assert choice.reason == cfg.row == table_row(headroom)[0]
        assert choice.caps == ()


def test_user_values_win_over_the_table():
    cfg = resolve(80 * GIB, 3, 1000, 50)
    assert (cfg.batch_size.value, cfg.seq_len.value, cfg.num_samples.value) == (3, 1000, 50)
    for choice in (cfg.batch_size, cfg.seq_len, cfg.num_samples):
        assert choice.source == "you"
        assert choice.reason == "set by you"
        assert choice.caps == ()


def test_user_values_win_on_cpu_too():
    cfg = resolve(None, 4, 2048, 300)
    assert (cfg.batch_size.value, cfg.seq_len.value, cfg.num_samples.value) == (4, 2048, 300)


def test_mixed_user_and_auto():
    cfg = resolve(12 * GIB, None, 1024, None)
    assert (cfg.batch_size.value, cfg.batch_size.source) == (4, "auto")
    assert (cfg.seq_len.value, cfg.seq_len.source) == (1024, "you")
    assert (cfg.num_samples.value, cfg.num_samples.source) == (128, "auto")


def test_max_positions_caps_auto_seq_len():
    cfg = resolve(80 * GIB, None, None, None, max_positions=2048)
    assert cfg.seq_len.value == 2048
    assert cfg.seq_len.source == "auto"
    assert cfg.seq_len.caps == ("capped from 8192 to 2048: the model's maximum positions",)


def test_max_positions_caps_user_seq_len_too():
    cfg = resolve(None, None, 4096, None, max_positions=512)
    assert cfg.seq_len.value == 512
    assert cfg.seq_len.source == "you"
    assert "capped from 4096 to 512" in cfg.seq_len.caps[0]
    assert "maximum positions" in cfg.seq_len.caps[0]


def test_max_positions_equal_or_larger_does_not_cap():
    assert resolve(None, None, None, None, max_positions=512).seq_len.caps == ()
    assert resolve(None, None, None, None, max_positions=100_000).seq_len.value == 512


def test_available_samples_caps_num_samples():
    cfg = resolve(80 * GIB, None, None, None, available_samples=40)
    assert cfg.num_samples.value == 40
    assert cfg.num_samples.caps == ("capped from 256 to 40: non-empty samples available",)


def test_available_samples_caps_user_num_samples():
    cfg = resolve(None, None, None, 500, available_samples=120)
    assert (cfg.num_samples.value, cfg.num_samples.source) == (120, "you")
    assert "capped from 500 to 120" in cfg.num_samples.caps[0]


def test_available_samples_equal_does_not_cap():
    cfg = resolve(None, None, None, None, available_samples=32)
    assert cfg.num_samples.value == 32 and cfg.num_samples.caps == ()


def test_batch_size_capped_to_num_samples():
    cfg = resolve(80 * GIB, None, None, None, available_samples=5)
    assert cfg.num_samples.value == 5
    assert cfg.batch_size.value == 5
    assert cfg.batch_size.caps == ("capped from 16 to 5: the number of samples",)


def test_user_batch_size_capped_to_user_num_samples():
    cfg = resolve(None, 8, None, 3)
    assert cfg.batch_size.value == 3
    assert cfg.batch_size.source == "you"
    assert "capped from 8 to 3: the number of samples" in cfg.batch_size.caps


def test_batch_size_equal_to_num_samples_is_not_capped():
    cfg = resolve(None, 4, None, 4)
    assert cfg.batch_size.value == 4 and cfg.batch_size.caps == ()


def test_all_caps_at_once():
    cfg = resolve(30 * GIB, None, None, None, max_positions=1024, available_samples=10)
    assert (cfg.batch_size.value, cfg.seq_len.value, cfg.num_samples.value) == (10, 1024, 10)
    assert len(cfg.batch_size.caps) == len(cfg.seq_len.caps) == len(cfg.num_samples.caps) == 1


def test_choice_describe():
    assert Choice(4, "auto", "headroom 10.0 GB is 8-16 GB").describe() == "4 (headroom 10.0 GB is 8-16 GB)"
    capped = Choice(5, "auto", "r", ("capped from 16 to 5: the number of samples",))
    assert capped.describe() == "5 (r); capped from 16 to 5: the number of samples"


def test_as_dict():
    cfg = resolve(None, 2, None, None, available_samples=10)
    d = cfg.as_dict()
    assert d["row"] == cfg.row
    assert d["batch_size"] == {"value": 2, "source": "you", "reason": "set by you", "caps": []}
    assert d["seq_len"]["value"] == 512 and d["seq_len"]["source"] == "auto"
    assert d["num_samples"] == {
        "value": 10,
        "source": "auto",
        "reason": cfg.row,
        "caps": ["capped from 32 to 10: non-empty samples available"],
    }

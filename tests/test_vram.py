"""GPU probing on a machine without GPU, CUDA_VISIBLE_DEVICES parsing, byte formatting."""

from __future__ import annotations

import pytest

from qwodel_nb.engine.vram import GIB, GpuInfo, VramReport, _visible_selection, format_bytes, probe

UUIDS = [
    "GPU-8f3a1b2c-0000-1111-2222-333344445555",
    "GPU-12ab34cd-6666-7777-8888-99990000aaaa",
    "GPU-8f99ffee-bbbb-cccc-dddd-eeeeffff0000",
]


# ----------------------------------------------------------------------------- probe()


def _has_nvidia_driver() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        return True
    except Exception:
        return False


needs_no_gpu = pytest.mark.skipif(_has_nvidia_driver(), reason="this machine has an NVIDIA driver")


@needs_no_gpu
def test_probe_without_gpu_reports_a_reason(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    report = probe()
    assert isinstance(report, VramReport)
    assert report.has_gpu is False
    assert report.gpus == ()
    assert report.calibration_gpu() is None
    assert report.reason  # never empty when there is no GPU
    assert "NVIDIA" in report.reason or "NVML" in report.reason
    assert report.cuda_visible_devices is None


@needs_no_gpu
@pytest.mark.parametrize("value", ["0", "", "-1", "GPU-nonsense"])
def test_probe_never_raises_and_records_cuda_visible_devices(monkeypatch, value):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    report = probe()
    assert report.has_gpu is False
    assert report.reason
    assert report.cuda_visible_devices == value


def test_report_with_gpus_uses_the_first_for_calibration():
    a = GpuInfo(0, 3, "H200", 141 * GIB, GIB, 140 * GIB)
    b = GpuInfo(1, 1, "H200", 141 * GIB, 0, 141 * GIB)
    report = VramReport(gpus=(a, b))
    assert report.has_gpu is True
    assert report.calibration_gpu() is a


# ----------------------------------------------------------------------------- CUDA_VISIBLE_DEVICES


def test_unset_means_all():
    assert _visible_selection(None, 4, []) is None


def test_empty_string_hides_every_gpu():
    assert _visible_selection("", 4, []) == []


def test_reordering():
    """CUDA renumbers in the listed order: torch's cuda:0 is NVML device 1 here."""
    assert _visible_selection("1,0", 2, []) == [1, 0]


def test_single_device_and_spaces():
    assert _visible_selection("2", 4, []) == [2]
    assert _visible_selection(" 3 , 1 ", 4, []) == [3, 1]


def test_stops_at_first_out_of_range_index():
    assert _visible_selection("0,5,1", 2, []) == [0]
    assert _visible_selection("5,0", 2, []) == []
    assert _visible_selection("2", 2, []) == []  # index == count is already out of range


def test_minus_one_hides_every_gpu():
    assert _visible_selection("-1", 2, []) == []
    assert _visible_selection("0,-1,1", 2, []) == [0]


def test_stops_at_empty_entry():
    assert _visible_selection("0,,1", 2, []) == [0]
    assert _visible_selection("1,", 2, []) == [1]


def test_duplicate_stops_the_list():
    assert _visible_selection("0,0,1", 2, []) == [0]
    assert _visible_selection("1,0,1", 2, []) == [1, 0]


def test_full_uuid():
    assert _visible_selection(UUIDS[1], 3, UUIDS) == [1]


def test_unique_uuid_prefix():
    assert _visible_selection("GPU-12ab", 3, UUIDS) == [1]
    assert _visible_selection("GPU-8f3a,GPU-8f99", 3, UUIDS) == [0, 2]


def test_ambiguous_uuid_prefix_stops():
    """'GPU-8f' matches two devices: CUDA treats it as invalid."""
    assert _visible_selection("GPU-8f", 3, UUIDS) == []
    assert _visible_selection("1,GPU-8f,0", 3, UUIDS) == [1]


def test_uuid_without_gpu_prefix_when_complete():
    assert _visible_selection(UUIDS[2][len("GPU-"):], 3, UUIDS) == [2]


def test_unknown_uuid_stops():
    assert _visible_selection("GPU-ffff", 3, UUIDS) == []
    assert _visible_selection("2,GPU-ffff,0", 3, UUIDS) == [2]


def test_mixed_index_and_uuid():
    assert _visible_selection("2,GPU-12ab", 3, UUIDS) == [2, 1]


def test_uuid_duplicate_of_index_stops():
    assert _visible_selection("1,GPU-12ab,0", 3, UUIDS) == [1]


def test_no_devices_at_all():
    assert _visible_selection("0", 0, []) == []


# ----------------------------------------------------------------------------- format_bytes


@pytest.mark.parametrize(
    "n, text",
    [
        (None, "n/a"),
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.00 KiB"),
        (1536, "1.50 KiB"),
        (5 * 2**20, "5.00 MiB"),
        (int(80.5 * GIB), "80.50 GiB"),
        (3 * 2**40, "3.00 TiB"),
        (5000 * 2**40, "5000.00 TiB"),
    ],
)
def test_format_bytes(n, text):
    assert format_bytes(n) == text

"""The GPU check script (benchmarks/gpu_check.py) on tiny settings, so its CPU-safe part cannot rot.
On a GPU machine the same script runs for real (docs/PERFORMANCE.md)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_gpu_check_dry_run_writes_its_record(shared_data, tmp_path):
    gpu_check = _load()
    data = tmp_path / "data"
    for key in ("set5", "set5_golden", "set14"):
        shutil.copytree(shared_data / gpu_check.DATA_LAYOUT[key], data / gpu_check.DATA_LAYOUT[key])
    shutil.copy(shared_data / "README.md", data / "README.md")
    for folder in gpu_check.DATA_LAYOUT["train"]:
        (data / folder).mkdir(parents=True)
        for src in sorted((shared_data / folder).glob("*.png"))[:2]:
            shutil.copy(src, data / folder / src.name)
    out = tmp_path / "out"
    rc = gpu_check.main(["--data", str(data), "--out", str(out), "--dry-run"])
    record = json.loads((out / "gpu_check.json").read_text())
    parts = record["parts"]
    assert rc == 0, {k: v.get("error") for k, v in parts.items()}
    assert set(parts) == {"gpu_tests", "bicubic_golden", "step_speed", "train_291"}
    # the MATLAB golden fixture through the device path of the downscaler: 0 differing values
    assert parts["bicubic_golden"]["images"] == 15 and parts["bicubic_golden"]["differing_values"] == 0
    assert parts["step_speed"]["steps_per_s"]["fp32"] > 0
    assert parts["step_speed"]["ratio_to_fp32"]["fp32"] == 1.0
    train = parts["train_291"]
    # the published bicubic baselines of Set5 / Set14 x4, and a residual model that starts at them
    assert train["set5"]["bicubic_psnr_y"] == pytest.approx(28.42, abs=0.02)
    assert train["set14"]["bicubic_psnr_y"] == pytest.approx(26.00, abs=0.02)
    assert train["curve"][0]["iteration"] == 0
    assert train["curve"][0]["set5_psnr_y"] == pytest.approx(train["set5"]["bicubic_psnr_y"], abs=0.01)
    if parts["gpu_tests"]["status"] == "ok":
        assert "collected" in parts["gpu_tests"]["summary"]
    md = (out / "gpu_check.md").read_text()
    assert "| fp32 |" in md and "| set5 |" in md and "0 differing values" in md


def test_prepare_data_names_what_is_missing(tmp_path):
    gpu_check = _load()
    with pytest.raises(SystemExit, match="lacks"):
        gpu_check.prepare_data(tmp_path / "nowhere", tmp_path / "pack")
    assert not (tmp_path / "pack").exists()

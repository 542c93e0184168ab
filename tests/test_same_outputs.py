"""benchmarks.same_outputs: two study runs compared file by file, exactly, volatile fields aside."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import torch
from PIL import Image

from benchmarks import same_outputs


def _run(root, *, weight=0.5, seconds=1.0, psnr=30.25, pixel=7, commit="abc", correct=1):
    (root / "models").mkdir(parents=True)
    torch.save({"state_dict": {"w": torch.full((2, 2), weight)}, "provenance": {"git_commit": commit},
                "iteration": 10}, root / "models" / "g.pt")
    pd.DataFrame({"model": ["srresnet"], "psnr_y": [psnr], "elapsed_s": [seconds]}).to_csv(
        root / "summary.csv", index=False)
    Image.fromarray(np.full((4, 4, 3), pixel, np.uint8)).save(root / "sr.png")
    (root / "job.log").write_text(f"took {seconds} s\n")
    (root / "records.json").write_text(json.dumps({"top1": 0.5, "time_utc": f"{seconds}",
                                                   "records": [{"image": "a", "correct_top1": correct}]}))
    return root


def test_runs_that_differ_only_in_times_and_commits_are_identical(tmp_path, capsys):
    a = _run(tmp_path / "a")
    b = _run(tmp_path / "b", seconds=9.0, commit="def")
    assert same_outputs.main([str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "identical: 1 .csv, 1 .json, 1 .png, 1 .pt, 1 not compared" in out
    assert "elapsed_s" in out and "provenance" in out  # what was skipped is said


def test_a_changed_weight_value_pixel_or_missing_file_is_named(tmp_path, capsys):
    a = _run(tmp_path / "a")
    for name, kwargs in [("w", {"weight": 0.5 + 1e-7}), ("p", {"psnr": 30.2500001}), ("x", {"pixel": 8}),
                         ("j", {"correct": 0})]:
        b = _run(tmp_path / name, **kwargs)
        assert same_outputs.main([str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "models/g.pt: ['state_dict']['w']: tensors differ" in out
    assert "summary.csv: column 'psnr_y' differs" in out
    assert "sr.png: pixels differ" in out
    assert "records.json: ['records'][0]['correct_top1']: 1 and 0" in out
    b = _run(tmp_path / "m")
    (b / "sr.png").unlink()
    assert same_outputs.main([str(a), str(b)]) == 1
    assert f"sr.png: only in {a}" in capsys.readouterr().out
    assert same_outputs.main([str(a), str(b), "--ignore", "sr.png"]) == 0

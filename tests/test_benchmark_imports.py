"""Every benchmark script imports: a moved function breaks a benchmark at once, not the day someone
runs it (benchmarks/warmup_probe.py imported stage_config from training.loop, which never had it)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = sorted(p for p in (Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py")
                    if p.name != "__main__.py")


@pytest.mark.parametrize("path", BENCHMARKS, ids=[p.stem for p in BENCHMARKS])
def test_benchmark_module_imports(path):
    spec = importlib.util.spec_from_file_location(f"benchmarks_probe_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # top-level imports only: every script runs its work under main()
    assert module.__doc__, f"{path.name} has no docstring saying what it measures"


def test_train_speed_rows_say_what_ran_not_what_was_asked(tmp_path):
    """benchmarks/train_speed.py's `ran` column comes from the speed flags the training recorded, so
    the 'default' row of a CPU with native bf16 says bf16 (issue 26: it was labelled fp32)."""
    import json

    from benchmarks.train_speed import CPU_SETTINGS, ran

    for flags, expected in [({"bf16": True, "channels_last": False, "compile": False}, "bf16"),
                            ({"bf16": False, "channels_last": False, "compile": False}, "fp32"),
                            ({"bf16": True, "channels_last": True, "compile": True}, "bf16+channels_last+compile")]:
        (tmp_path / "provenance.json").write_text(json.dumps({"speed_flags": flags}))
        assert ran(tmp_path) == expected
    asked = dict(CPU_SETTINGS)
    assert asked["fp32"] == {"bf16": False, "channels_last": False, "compile": False}  # float32 on any CPU
    assert asked["default"]["bf16"] is True  # the config's default, bf16 where the CPU has it

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

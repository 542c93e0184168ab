"""sfsr's threading policy (sfsr.threads, issue 21 item 3): importing sfsr puts OMP_WAIT_POLICY=PASSIVE
in the environment before torch loads its OpenMP runtime, a user's own setting wins, torch imported
first is reported (not a crash), and every job logs the policy in effect. No timings here: those are
``python -m benchmarks --only contention`` (docs/PERFORMANCE.md "Threading under contention").

What libgomp itself took is read from its ``OMP_DISPLAY_ENV=VERBOSE`` report on stderr at load
(``GOMP_SPINCOUNT`` is the effective spin count: 0 when passive, 300000 libgomp's default)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
THREAD_ENV = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "OMP_DISPLAY_ENV")


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in THREAD_ENV}
    script = f"import sys; sys.path.insert(0, {str(REPO / 'src')!r})\n" + textwrap.dedent(code)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=REPO, env=base | {"OMP_DISPLAY_ENV": "VERBOSE"} | env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _libgomp(stderr: str) -> dict[str, str]:
    """What libgomp reported at load (``OMP_DISPLAY_ENV=VERBOSE``); empty without libgomp."""
    out = {}
    for line in stderr.splitlines():
        key, sep, value = line.strip().partition(" = ")
        if sep and key in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
            out.setdefault(key, value.strip("'"))
    return out


REPORT = """
import json, os
from sfsr import threads
print(json.dumps({"env": os.environ.get("OMP_WAIT_POLICY"), "describe": threads.describe(),
                  "line": threads.policy_line()}))
"""


def test_importing_sfsr_sets_the_wait_policy_before_torch_loads():
    proc = _run("import sfsr, torch\ntorch.ones(64, 64).sum()\n" + REPORT)
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["env"] == "PASSIVE"
    assert got["describe"]["applied_before_torch"] is True
    assert got["describe"]["set_by_sfsr"] == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert "OMP_WAIT_POLICY=PASSIVE (sfsr's default)" in got["line"] and "NOT in effect" not in got["line"]
    gomp = _libgomp(proc.stderr)
    if not gomp:
        pytest.skip("torch's OpenMP runtime is not libgomp (no OMP_DISPLAY_ENV report)")
    assert gomp == {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "0"}, proc.stderr  # torch took it


def test_the_users_own_setting_wins():
    proc = _run("import sfsr, torch\n" + REPORT, OMP_WAIT_POLICY="ACTIVE")
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["env"] == "ACTIVE"
    assert got["describe"]["set_by_sfsr"] == {} and got["describe"]["kept_from_environment"] == \
        {"OMP_WAIT_POLICY": "ACTIVE"}
    assert "OMP_WAIT_POLICY=ACTIVE (from the environment)" in got["line"]
    gomp = _libgomp(proc.stderr)
    if gomp:
        assert gomp["OMP_WAIT_POLICY"] == "ACTIVE" and gomp["GOMP_SPINCOUNT"] != "0"


def test_torch_imported_first_is_reported_not_an_error():
    proc = _run("import torch, sfsr\n" + REPORT)
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["describe"]["applied_before_torch"] is False
    assert got["env"] == "PASSIVE"  # still in the environment, for child processes
    assert "NOT in effect in this process" in got["line"]
    assert "torch was imported before sfsr" in proc.stderr  # the warning
    gomp = _libgomp(proc.stderr)
    if gomp:
        assert gomp["GOMP_SPINCOUNT"] == "300000"  # libgomp's default: too late to change it


def test_apply_env_defaults_uses_setdefault():
    from sfsr import threads

    saved = {k: (dict(v) if isinstance(v, dict) else v) for k, v in threads.STATE.items()}
    try:
        env = {"OMP_NUM_THREADS": "1"}
        state = threads.apply_env_defaults(env)
        assert env == {"OMP_NUM_THREADS": "1", **threads.ENV_DEFAULTS}
        assert state["set"] == threads.ENV_DEFAULTS and state["kept"] == {}
        env = {"OMP_WAIT_POLICY": "active"}
        state = threads.apply_env_defaults(env)
        assert env == {"OMP_WAIT_POLICY": "active"} and state["kept"] == {"OMP_WAIT_POLICY": "active"}
    finally:
        threads.STATE.update(saved)


def test_run_rule_logs_the_policy_of_the_job(tmp_path):
    """One INFO line per job: torch's threads, the job's threads and the wait policy."""
    log = tmp_path / "job.log"
    _run(f"""
        import sfsr, torch
        from types import SimpleNamespace
        from sfsr.workflow import run_rule
        smk = SimpleNamespace(rule="train_warmup", log=[{str(log)!r}], threads=1,
                              resources=SimpleNamespace(gpu=0), wildcards={{}}, config={{}})
        run_rule(smk, {{"train_warmup": lambda smk: None}})
        """, OMP_NUM_THREADS="1")
    lines = [line for line in log.read_text().splitlines() if "threading:" in line]
    assert len(lines) == 1, log.read_text()
    assert "INFO" in lines[0] and "1 torch threads" in lines[0] and "job threads 1" in lines[0]
    assert "OMP_WAIT_POLICY=PASSIVE (sfsr's default)" in lines[0]


#: Modules that load torch (or another OpenMP user) when imported.
HEAVY = {"torch", "torchvision", "sklearn", "lpips"}


@pytest.mark.parametrize("path", sorted((REPO / "workflow_scripts").glob("*.py")) +
                         [REPO / "benchmarks" / name for name in
                          ("__main__.py", "train_speed.py", "cpu_ceiling.py", "contention.py")],
                         ids=lambda p: p.name)
def test_entry_points_import_sfsr_before_torch(path):
    """Every torch job imports sfsr (and so its threading policy) before anything that loads torch.
    (The CLI is ``sfsr.cli``: sfsr's ``__init__`` runs first by construction.)"""
    names = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names.append(node.module or "")
    tops = [n.split(".")[0] for n in names]
    if "sfsr" not in tops:  # no top-level sfsr import: then no top-level torch either
        assert not HEAVY & set(tops), path.name
        return
    before = set(tops[:tops.index("sfsr")])
    assert not before & HEAVY, (path.name, before & HEAVY)

"""GPU slots (sfsr.gpu_slots): every GPU job of one machine gets GPUs of its own, a killed job's
slot comes back, an existing CUDA_VISIBLE_DEVICES is honoured, 0-GPU jobs are left alone.

No GPU is needed: the device ids are injected (``ids=`` or ``SFSR_GPU_IDS``) and the jobs are real
processes that lock real files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sfsr import gpu_slots
from sfsr.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _python(code: str, env: dict | None = None, **kw) -> subprocess.Popen:
    script = f"import sys; sys.path.insert(0, {str(REPO / 'src')!r})\n" + textwrap.dedent(code)
    return subprocess.Popen([sys.executable, "-c", script], env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_zero_gpus_and_no_gpu_change_nothing(tmp_path):
    env = {"SFSR_GPU_IDS": "0,1"}
    assert gpu_slots.acquire(0, env=env, folder=tmp_path) is None
    assert env == {"SFSR_GPU_IDS": "0,1"}
    for no_gpu in ({"CUDA_VISIBLE_DEVICES": ""}, {"CUDA_VISIBLE_DEVICES": "-1"}, {}):
        env = dict(no_gpu)
        assert gpu_slots.acquire(1, env=env, folder=tmp_path, ids=None if no_gpu else []) is None
        assert env == no_gpu
    assert not list(tmp_path.iterdir())  # no lock file either

    class Smk:  # a job without a gpu resource
        rule, resources = "summarize", type("R", (), {})()
    assert gpu_slots.acquire_for_job(Smk()) is None


def test_candidates_honour_cuda_visible_devices_first():
    detect = lambda: ["0", "1", "2", "3"]  # noqa: E731  what nvidia-smi would list
    assert gpu_slots.candidate_ids({}, detect) == ["0", "1", "2", "3"]
    assert gpu_slots.candidate_ids({"SFSR_GPU_IDS": "2, 3"}, detect) == ["2", "3"]
    assert gpu_slots.candidate_ids({"CUDA_VISIBLE_DEVICES": "5,7", "SFSR_GPU_IDS": "2"}, detect) == ["5", "7"]
    assert gpu_slots.candidate_ids({"CUDA_VISIBLE_DEVICES": "GPU-aa,GPU-bb"}, detect) == ["GPU-aa", "GPU-bb"]


def test_existing_cuda_visible_devices_is_honoured(tmp_path):
    env = {"CUDA_VISIBLE_DEVICES": "5,7"}  # e.g. set by SLURM for this allocation
    first = gpu_slots.acquire(1, env=env, folder=tmp_path)
    assert first.ids == ["5"] and env["CUDA_VISIBLE_DEVICES"] == "5"
    env2 = {"CUDA_VISIBLE_DEVICES": "5,7"}
    second = gpu_slots.acquire(1, env=env2, folder=tmp_path)  # another job: the other id
    assert second.ids == ["7"] and env2["CUDA_VISIBLE_DEVICES"] == "7"
    with pytest.raises(TimeoutError):  # both busy
        gpu_slots.acquire(1, env={"CUDA_VISIBLE_DEVICES": "5,7"}, folder=tmp_path, poll=0.01, timeout=0.1)
    first.release()
    second.release()
    with gpu_slots.acquire(2, env=env2 | {"CUDA_VISIBLE_DEVICES": "5,7"}, folder=tmp_path) as both:
        assert both.ids == ["5", "7"]
    with pytest.raises(ConfigError, match="asks for 3 GPUs .* only 2"):
        gpu_slots.acquire(3, env={"CUDA_VISIBLE_DEVICES": "5,7"}, folder=tmp_path)


def test_slurm_allocations_do_not_share_locks(tmp_path):
    base = {"SFSR_GPU_SLOT_DIR": str(tmp_path)}
    assert gpu_slots.lock_dir(base | {"SLURM_JOB_ID": "11"}) != gpu_slots.lock_dir(base | {"SLURM_JOB_ID": "12"})
    assert gpu_slots.lock_dir(base) == tmp_path


JOB = """
import json, os, time
from sfsr import gpu_slots
slots = gpu_slots.acquire({n}, ids={ids!r}, folder={folder!r}, env=os.environ, poll=0.05)
t0 = time.time()
time.sleep({hold})
print(json.dumps({{"ids": slots.ids, "env": os.environ["CUDA_VISIBLE_DEVICES"], "start": t0, "end": time.time()}}))
"""


def test_concurrent_jobs_never_share_a_slot(tmp_path):
    """Six real processes, two slots, jobs of one and two GPUs: no two live jobs hold one id."""
    wants = [1, 1, 2, 1, 1, 2]
    procs = [_python(JOB.format(n=n, ids=["0", "1"], folder=str(tmp_path), hold=0.4)) for n in wants]
    runs = []
    for proc, n in zip(procs, wants):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        run = json.loads(out)
        assert len(run["ids"]) == n and run["env"] == ",".join(run["ids"])
        runs.append(run)
    for i, a in enumerate(runs):
        for b in runs[i + 1:]:
            if set(a["ids"]) & set(b["ids"]):
                assert a["end"] <= b["start"] or b["end"] <= a["start"], (a, b)
    # six jobs of 0.4 s on two slots cannot all have run at once
    assert max(r["end"] for r in runs) - min(r["start"] for r in runs) > 0.8


def test_a_killed_jobs_slot_comes_back(tmp_path):
    holder = _python(f"""
        from sfsr import gpu_slots
        import time
        s = gpu_slots.acquire(1, ids=["0"], folder={str(tmp_path)!r}, holder="the killed job")
        print("held", flush=True)
        time.sleep(600)
        """)
    assert holder.stdout.readline().strip() == "held"
    waiter = _python(f"""
        import logging, sys, time
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
        from sfsr import gpu_slots
        t0 = time.time()
        s = gpu_slots.acquire(1, ids=["0"], folder={str(tmp_path)!r}, poll=0.05, timeout=60)
        print(s.ids, flush=True)
        """)
    time.sleep(1.0)
    assert waiter.poll() is None, "the second job must wait while the slot is held"
    holder.send_signal(signal.SIGKILL)  # no cleanup runs: the kernel drops the flock
    holder.wait(timeout=30)
    out, err = waiter.communicate(timeout=60)
    assert waiter.returncode == 0 and out.strip() == "['0']", err
    assert "waiting for 1 free GPU slot(s) of 0" in err and "the killed job" in err


def test_run_rule_gives_a_gpu_job_its_slot(tmp_path):
    """Through sfsr.workflow.run_rule, as a workflow script runs: the handler sees its own
    CUDA_VISIBLE_DEVICES; a job with gpu=0 sees the environment unchanged."""
    code = f"""
        import os
        from types import SimpleNamespace
        from sfsr.workflow import run_rule
        seen = {{}}
        def handler(smk):
            seen[smk.rule] = os.environ.get("CUDA_VISIBLE_DEVICES")
        def job(rule, gpu):
            return SimpleNamespace(rule=rule, log=[], resources=SimpleNamespace(gpu=gpu), wildcards={{}}, config={{}})
        from sfsr import gpu_slots
        other = gpu_slots.acquire(1, ids=["3"], folder={str(tmp_path)!r}, env={{}})  # GPU 3 busy
        run_rule(job("train_warmup", 1), {{"train_warmup": handler}})
        os.environ.pop("CUDA_VISIBLE_DEVICES")
        run_rule(job("summarize", 0), {{"summarize": handler}})
        print(seen)
        """
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    proc = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(REPO / 'src')!r})\n"
                           + textwrap.dedent(code)], capture_output=True, text=True, timeout=120,
                          env=env | {"SFSR_GPU_IDS": "3,4", "SFSR_GPU_SLOT_DIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "{'train_warmup': '4', 'summarize': None}"

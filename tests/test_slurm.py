"""The SLURM profile (profiles/slurm), checked two ways.

1. GPU requests come from each rule's own ``resources: gpu``: for every experiment file, a dry run
   through the real profile lists every job with the resources the executor would get, and the
   executor plugin's own submit-string builder (``get_submit_command`` + ``set_gres_string``) and
   partition choice (``get_best_partition`` over the profile's ``partitions.yaml``) turn each into
   its ``sbatch`` line: ``--gpus=N`` on the GPU partition exactly for the jobs with gpu N > 0, no
   GPU and the CPU partition for all others.
2. A real single-node SLURM (Debian's slurm-wlm, installed with apt-get where missing; see
   tests/slurm_cluster.py) runs part of the suite's shared tiny study (data, warm-up training,
   upscaling, metrics) through ``--profile profiles/slurm``; its per-image metrics tables and trained
   generator equal the shared local run's bit for bit (same settings, seed and job environment, CPU),
   and slurmctld's own record shows which jobs got a GPU and on which partition. Skips with the reason where it is not
   root, cannot install or slurm does not start. Timings: docs/cluster.md.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from helpers import (EXPERIMENT_FILES as FILES, EXPERIMENT_OVERRIDES as OVERRIDES, EXPERIMENTS, REPO, SNAKEMAKE,
                     TINY_STUDY, TINY_STUDY_ENV, merged)

pytestmark = [pytest.mark.slow, pytest.mark.heavy(seconds=100)]

PROFILE = REPO / "profiles" / "slurm"
#: How the README runs the cluster profile (profiles/README.md): without the local workflow profile.
CLUSTER = ["--profile", str(PROFILE), "--workflow-profile", "none"]
#: Test cluster only: no accounting storage, so job states come from squeue (MinJobAge is an hour
#: there) and there is no account to give; status checks start after 1 s instead of 40.
TEST_CLUSTER_OPTIONS = ["--slurm-status-command", "squeue", "--slurm-no-account",
                        "--slurm-init-seconds-before-status-checks", "1", "--slurm-keep-successful-logs"]
#: Rules that declare a `gpu` resource in rules/*.smk; no other rule may get a GPU.
GPU_RULES = re.compile(r"train_\w+|pretrain_classifier|pretrain_judge|finetune_lr_classifier|classify|classify_judge"
                       r"|gate|upscale|perceptual_metrics|refsr_metrics")


# ------------------------------------------------------------------------------------- the profile
def _profile() -> dict:
    return yaml.safe_load((PROFILE / "config.yaml").read_text())


def _partitions():
    from snakemake_executor_plugin_slurm.partitions import read_partition_file
    return read_partition_file(PROFILE / _profile()["slurm-partition-config"])


def test_profile_leaves_gpu_requests_and_partitions_to_the_rules_resources():
    profile = _profile()
    assert profile["executor"] == "slurm"
    assert profile["restart-times"] >= 1 and profile["slurm-requeue"] is True  # preempted jobs come back
    assert profile["rerun-incomplete"] is True
    set_by_profile = set(profile.get("default-resources", {}))
    set_by_profile |= {k for res in profile.get("set-resources", {}).values() for k in res}
    assert not set_by_profile & {"gpu", "gres", "gpu_model", "slurm_partition"}, set_by_profile
    limits = {p.name: p.limits.max_gpu for p in _partitions()}
    assert any(n > 0 for n in limits.values()) and any(n == 0 for n in limits.values()), limits


# ------------------------------------------------------------------------ every experiment, dry-run
def _jobs_of_dry_run(text: str) -> list[SimpleNamespace]:
    """Jobs of a dry run's printout: rule, threads and resources (numbers as int)."""
    jobs = []
    for block in re.split(r"\n(?=\[[^\]]+\]\n(?:local)?rule )", text):
        rule = re.search(r"^(local)?rule (\w+):", block, re.M)
        if rule is None:
            continue
        threads = re.search(r"^\s+threads: (\d+)", block, re.M)
        line = re.search(r"^\s+resources: (.*)$", block, re.M)
        resources = {}
        for key, value in re.findall(r"(\w+)=([^,]*)", line.group(1) if line else ""):
            resources[key] = int(value) if re.fullmatch(r"-?\d+", value.strip()) else value.strip()
        jobs.append(SimpleNamespace(name=rule.group(2), local=bool(rule.group(1)),
                                    threads=int(threads.group(1)) if threads else 1,
                                    wildcards=re.search(r"^\s+wildcards: (.*)$", block, re.M),
                                    resources=_Resources(resources), is_group=lambda: False))
    return jobs


class _Resources(dict):
    """Job resources as the plugin reads them (``.get`` and attributes)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class _Quiet:
    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def sbatch_line(job, partitions) -> str:
    """The sbatch options the SLURM executor plugin gives this job (its run_job, less the wrap)."""
    from snakemake_executor_plugin_slurm.partitions import get_best_partition
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    partition = get_best_partition(partitions, job, _Quiet())
    params = {"run_uuid": "RUN", "slurm_logfile": "LOG", "comment_str": f"rule_{job.name}", "account": "",
              "partition": f" -p {partition}" if partition else "", "workdir": "WORKDIR"}
    return get_submit_command(job, params) + set_gres_string(job)


def _local_paths(config: dict) -> dict:
    """Local datasets of a study, their relative paths made absolute (the dry run runs elsewhere);
    skips where such a folder is absent (the *_local files read ../shared/data)."""
    from sfsr.config import DATASET_LISTS
    used = {d for key in DATASET_LISTS for d in config[key]}
    out = {}
    for name in sorted(used):
        spec = config["datasets"][name]
        if spec.get("source") == "local" and not os.path.isabs(spec["path"]):
            path = (REPO / spec["path"]).resolve()
            if not path.exists():
                pytest.skip(f"{spec['path']} (dataset {name}) is absent here: shared data not beside the clone")
            out[name] = {"path": str(path)}
    return {"datasets": out} if out else {}


STUDIES = [(p,) for p in FILES] + [(p, q) for p in FILES for q in OVERRIDES[p]]


@pytest.mark.parametrize("files", [()] + STUDIES, ids=["config.yaml"] + ["+".join(p.stem for p in s) for s in STUDIES])
def test_gpu_requests_are_exactly_the_jobs_that_declare_a_gpu(files, tmp_path):
    assert len(STUDIES) == len(EXPERIMENTS)
    over = tmp_path / "paths.yaml"
    over.write_text(yaml.safe_dump(_local_paths(merged(*files))))
    # a dry run caps every job's threads at --cores (1 when not given); a SLURM run caps nothing
    cmd = SNAKEMAKE + CLUSTER + ["-n", "--cores", "1024", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
                                 "--configfile", str(REPO / "config.yaml"), *map(str, files), str(over)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "workflow specific profile" not in proc.stderr  # profiles/default stays out of it
    jobs = [j for j in _jobs_of_dry_run(proc.stdout + proc.stderr) if not j.local]
    assert jobs, proc.stdout[-2000:]
    partitions = _partitions()
    gpu_partitions = {p.name for p in partitions if p.limits.max_gpu > 0}
    gpu_rules = set()
    for job in jobs:
        declared = job.resources.get("gpu", 0)
        line = sbatch_line(job, partitions)
        chosen = re.search(r" -p (\S+)", line)
        partition = chosen.group(1) if chosen else None  # None: no partition fits the job
        where = f"{job.name} {job.wildcards.group(1) if job.wildcards else ''}: {line}"
        if declared > 0:
            gpu_rules.add(job.name)
            assert f" --gpus={declared}" in line and partition in gpu_partitions, where
        else:
            assert "--gpus" not in line and "--gres" not in line and partition not in gpu_partitions, where
    assert all(GPU_RULES.fullmatch(r) for r in gpu_rules), gpu_rules  # no CPU-only rule asks for one
    from sfsr.config import validate
    config = validate(merged(*files))  # the schema's defaults filled (config.yaml leaves training.gpus out)
    if config["training"]["gpus"] > 0:  # a study that trains on GPUs requests them for its training
        assert any(r.startswith("train_") for r in gpu_rules), gpu_rules


# ------------------------------------------------------------------------------- a real SLURM run
#: What the SLURM run builds of the run's shared tiny study (helpers.TINY_STUDY, same settings and
#: job environment): the warm-up generator and the per-image metrics of it and of bicubic on the test
#: set. Every kind of job a study submits is there (data, training, upscale, metrics; with and
#: without a GPU request); the rest of the study would only repeat them.
SLURM_TARGETS = ["models/srresnet_x4/warmup/generator.pt", "metrics/srresnet_x4/builtin_valid_x4.csv",
                 "metrics/bicubic/builtin_valid_x4.csv"]


@pytest.fixture(scope="module")
def slurm():
    from slurm_cluster import ClusterUnavailable, SlurmCluster, ensure_installed

    if os.geteuid() != 0:
        pytest.skip("a test SLURM cluster needs root (apt-get, munged, slurmd)")
    try:
        ensure_installed()
    except ClusterUnavailable as e:
        pytest.skip(f"no SLURM here: {e}")
    root = Path(tempfile.mkdtemp(prefix="sfsr-slurm-"))  # short: munge's socket path has a length limit
    cluster = SlurmCluster(root)
    try:
        try:
            cluster.start()
        except (ClusterUnavailable, OSError, subprocess.SubprocessError) as e:
            pytest.skip(f"SLURM did not start here: {e}")
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            cluster.cancel_all()
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def _start(workdir: Path, extra: list[str], env: dict) -> subprocess.Popen:
    """`snakemake` of :data:`SLURM_TARGETS` of the tiny study in ``workdir`` (started, not waited for)."""
    workdir.mkdir(parents=True, exist_ok=True)
    over = workdir / "study.yaml"
    over.write_text(yaml.safe_dump({"data_dir": str(workdir / "data"), "results_dir": str(workdir / "results"),
                                    **copy.deepcopy(TINY_STUDY)}))
    targets = [str(_results(workdir) / t) for t in SLURM_TARGETS]
    cmd = SNAKEMAKE + [*targets, *extra, "-s", str(REPO / "Snakefile"), "-d", str(workdir),
                       "--configfile", str(REPO / "config.yaml"), str(over)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**env, "PYTHONUNBUFFERED": "1"}, start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)  # snakemake cancels its SLURM jobs on SIGTERM
        out, _ = proc.communicate(timeout=60)
        raise AssertionError(f"snakemake ran past {timeout} s:\n{out[-6000:]}") from None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, f"snakemake failed ({proc.returncode}):\n{out[-8000:]}"
    return out


def _results(workdir: Path) -> Path:
    return workdir / "results" / "default"


def test_part_of_the_tiny_study_on_slurm_equals_the_shared_local_run(slurm, tmp_path, request):
    import pandas as pd
    import torch

    # the SLURM run first: it spends most of its time waiting for the scheduler and its checks, while
    # this worker runs (or waits for) the run's shared local study
    start = time.monotonic()
    on_slurm = _start(tmp_path / "slurm", CLUSTER + TEST_CLUSTER_OPTIONS, env={**slurm.env, **TINY_STUDY_ENV})
    try:
        local_work = request.getfixturevalue("tiny_study")
        local_s = time.monotonic() - start
    finally:
        out = _finish(on_slurm)
    slurm_s = time.monotonic() - start
    print(f"shared study ready after {local_s:.0f} s, SLURM run {slurm_s:.0f} s (at once)")
    assert "workflow specific profile" not in out

    local, cluster = _results(local_work), _results(tmp_path / "slurm")
    tables = sorted(p.relative_to(cluster) for p in (cluster / "metrics").rglob("*.csv"))
    assert tables == [Path("metrics/bicubic/builtin_valid_x4.csv"), Path("metrics/srresnet_x4/builtin_valid_x4.csv")]
    for table in tables:
        pd.testing.assert_frame_equal(pd.read_csv(cluster / table), pd.read_csv(local / table), check_exact=True)
    generator = Path("models/srresnet_x4/warmup/generator.pt")
    ours, theirs = (torch.load(r / generator, weights_only=True)["state_dict"] for r in (cluster, local))
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    # the training job ran as the local one did (bf16 autocast as on a native-bf16 CPU)
    assert "on cpu: bf16 autocast on (SFSR_CPU_BF16=native)" in (cluster / "logs/train_warmup/srresnet_x4.log").read_text()

    # slurmctld's record of the run: every job of a rule that declares gpu > 0 got a GPU on the GPU
    # partition, every other job none on the CPU partition
    jobs = {j["Comment"]: j for j in slurm.jobs() if j.get("Comment", "").startswith("rule_")}
    assert all(j["JobState"] == "COMPLETED" for j in jobs.values()), jobs
    assert all(j["Requeue"] == "1" for j in jobs.values()), jobs  # slurm-requeue: preempted jobs come back
    gpu_jobs = {c for c, j in jobs.items() if "gpu" in j.get("TresPerJob", "")}
    assert gpu_jobs == {"rule_train_warmup_wildcards_srresnet_x4",
                        "rule_upscale_wildcards_srresnet_x4_builtin_valid_4"}, jobs
    for comment, job in jobs.items():
        assert job["Partition"] == ("gpu" if comment in gpu_jobs else "cpu"), (comment, job)
    assert len(jobs) == 7, sorted(jobs)  # prepare, make_lr, train_warmup, upscale x2, image_metrics x2

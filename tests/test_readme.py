"""Every command the README shows runs, in the environment the README's main command installs
(``pip install ... -e .``, not the test extra): a dependency that only the test extra pulls in
(pygments for the report came through pytest once) fails here.

A copy of the working tree (tracked and not ignored files) gets a fresh venv made by the README's own install line. Commands
whose real run is long (the whole study, the training stages) run as dry-runs (``-n``); the data
stage, the partial report, ``--lint`` and every ``sfsr`` command run for real. A README command this
test does not know fails the test, so new commands get covered.

Set ``SFSR_README_VENV`` to a venv already made by the README's main install to reuse it.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.heavy(seconds=190)]

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


def readme_commands() -> list[str]:
    """Commands of the README: lines of ```bash blocks and inline `snakemake ...` / `sfsr ...`."""
    text = README.read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split(" #")[0].strip()
            if line:
                commands.append(line)
    commands += re.findall(r"`((?:snakemake|sfsr) [^`]*)`", text)
    return list(dict.fromkeys(commands))


MAIN_INSTALL = ("python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.14.1 "
                "torchvision==0.29.1 -e . && ")
TEST_INSTALL = ("python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.14.1 "
                "torchvision==0.29.1 -e '.[test]' && python -m pytest")
STAGES = ("data", "classifier", "warmup", "gan", "semantic", "shared", "evaluate", "classification",
          "figures")

#: README command -> the command this test runs (None: not run here, with the reason beside it).
PLACEHOLDERS = {"HR_DIR": "{hr}", "LR_DIR": "{work}/lr", "SR_DIR": "{work}/out", "IN": "{lr}",
                "OUT": "{work}/out", "generator.pt": "{work}/generator.pt"}


def planned(command: str) -> str | None:
    """How the test runs a README command."""
    if command == TEST_INSTALL:
        return None  # the test command itself: .ci/run runs it
    if command.startswith(MAIN_INSTALL):
        return command.removeprefix(MAIN_INSTALL) + " -n"  # the install is the fixture below
    if command.startswith("snakemake --report"):
        return command if command.endswith(" finished") else None  # needs a complete run (7 min)
    if command in ("snakemake -n", "snakemake --lint", "snakemake --cores all data"):
        return command
    if command.startswith("snakemake --profile profiles/slurm"):
        return command + " -n"
    if command.startswith("snakemake --cores all"):
        return command + " -n"
    if command.startswith("sfsr "):
        words = shlex.split(command)
        return shlex.join(PLACEHOLDERS.get(w, w) for w in words)
    raise AssertionError(f"README command {command!r} is not covered by tests/test_readme.py: add it")


#: A README command that differs from others only in its targets (``snakemake --cores all <targets>``,
#: run here as a dry run). All of them run as one dry run of all their targets (the bare command's
#: is ``all``, the default target): each Snakemake start parses the workflow and builds the default
#: study's DAG, seconds of CPU per command; a target the workflow lacks still fails it, by name.
TARGETS_ONLY = re.compile(r"snakemake --cores all((?: [A-Za-z_]\w*)*) -n")


def test_every_readme_command_is_known():
    commands = readme_commands()
    assert any(c.startswith(MAIN_INSTALL) for c in commands) and TEST_INSTALL in commands
    assert {f"snakemake --cores all {s}" for s in STAGES} <= set(commands)
    for command in commands:
        planned(command)  # raises for an unknown command


def _run(cmd: str, cwd: Path, venv: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    return subprocess.run(["bash", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def readme_env(tmp_path_factory) -> tuple[Path, Path]:
    """(a copy of the working tree as a commit of it would hold, the venv the README's main install
    made in it)."""
    work = tmp_path_factory.mktemp("readme")
    clone = work / "sfsr"
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=REPO, capture_output=True, check=True)
    for name in files.stdout.decode().split("\0"):
        if name and (REPO / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, clone / name)
    reuse = os.environ.get("SFSR_README_VENV")
    if reuse:
        if not (Path(reuse) / "bin" / "python").exists():
            raise AssertionError(f"SFSR_README_VENV={reuse} is not a venv (no bin/python)")
        return clone, Path(reuse)
    install = MAIN_INSTALL.removesuffix(" && ")
    proc = subprocess.run(["bash", "-c", install.replace(". .venv/bin/activate && ", "")
                           .replace("pip install", ".venv/bin/python -m pip install -q")],
                          cwd=clone, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        if re.search(r"Could not find a version|No matching distribution|Network is unreachable|"
                     r"Temporary failure in name resolution|Connection", proc.stderr):
            pytest.skip(f"the README's install cannot reach a package index here: {proc.stderr[-300:]}")
        raise AssertionError(f"the README's main install failed:\n{proc.stderr[-4000:]}")
    return clone, clone / ".venv"


def test_readme_commands_run_in_the_main_install(readme_env):
    clone, venv = readme_env
    # the main install holds no test-only package (so a hidden dependency on one shows here)
    probe = _run("python -c 'import importlib.util as u; print(u.find_spec(\"pytest\") is None)'", clone, venv)
    assert probe.stdout.strip() == "True", "the README venv has pytest: it is not the main install"
    commands = readme_commands()
    data_first = sorted(commands, key=lambda c: c != "snakemake --cores all data")
    hr = clone / "resources" / "data" / "prepared" / "builtin_test" / "HR"
    lr = clone / "resources" / "data" / "prepared" / "builtin_test" / "LR_bicubic" / "X4"
    made = _run("python -c \"from sfsr.models import build_generator, generator_spec, save_generator; "
                "kw = dict(num_blocks=1, num_features=8); "
                "save_generator('generator.pt', build_generator('edsr_baseline', 4, **kw), "
                "generator_spec('edsr_baseline', 4, **kw))\"", clone, venv)
    assert made.returncode == 0, made.stderr
    ran, targets = [], []
    for command in data_first:
        cmd = planned(command)
        if cmd is None:
            continue
        cmd = cmd.format(hr=hr, lr=lr, work=clone)
        only = TARGETS_ONLY.fullmatch(cmd)
        if only:
            targets += only.group(1).split() or ["all"]
            continue
        proc = _run(cmd, clone, venv)
        assert proc.returncode == 0, f"README command failed: {cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        assert "Traceback" not in proc.stderr, (cmd, proc.stderr[-4000:])
        ran.append(cmd)
    assert set(STAGES) - {"data"} <= set(targets) and "all" in targets
    proc = _run("snakemake --cores all -n " + " ".join(dict.fromkeys(targets)), clone, venv)
    assert proc.returncode == 0, f"README commands failed: {targets}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert "Traceback" not in proc.stderr, (targets, proc.stderr[-4000:])
    assert (clone / "results" / "report.html").stat().st_size > 10_000  # the partial report
    assert sorted(p.name for p in (clone / "out").glob("*.png")) == sorted(p.name for p in lr.glob("*.png"))
    assert any(c.startswith("snakemake --cores all --resources gpu=1") for c in ran)

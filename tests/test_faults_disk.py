"""A full disk and unusable machine settings give one line, never a traceback (issue 22, items 2 and 5;
docs/reliability.md).

The disk tests run a child Python process in its own user and mount namespace on a tiny tmpfs
(``unshare --user --map-root-user --mount`` + ``mount -t tmpfs -o size=1m``) that the child fills, so
every write fails with ENOSPC as on a real full disk; they skip, saying why, where such a namespace
cannot be made. The GPU-slot tests need no GPU (the ids are given, the locks are real files)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sfsr import gpu_slots
from sfsr.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
FULL = "No space left on device; the disk is full; free some space and run the same command again"

#: Run first in every child: this checkout's sfsr, and ``fill(folder)``: a file that takes every
#: free block of the tmpfs.
PRELUDE = f"""
import sys
sys.path.insert(0, {str(REPO / 'src')!r})
import sfsr  # before torch (sfsr sets the OpenMP wait policy)

def fill(folder):
    with open(folder / "filler", "wb", buffering=0) as fh:
        try:
            while fh.write(b"x" * 4096):
                pass
        except OSError:
            pass
"""


def _namespace_cmd(mount: Path, options: str, script: str) -> list[str]:
    return ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
            'mount -t tmpfs -o "$1" tmpfs "$2" && exec "$3" -c "$4"', "sh", options, str(mount),
            sys.executable, script]


@pytest.fixture(scope="module")
def tmpfs_ok(tmp_path_factory) -> None:
    """Skip (saying why) where no user+mount namespace with a tmpfs can be made."""
    mount = tmp_path_factory.mktemp("probe")
    try:
        proc = subprocess.run(_namespace_cmd(mount, "size=64k", "import sys"), capture_output=True,
                              text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"a small full disk is made with unshare --user --mount and a tmpfs; not here: {exc}")
    if proc.returncode != 0:
        pytest.skip("a small full disk is made with unshare --user --map-root-user --mount and "
                    f"mount -t tmpfs; not possible here: {proc.stderr.strip()[:300]}")


def _in_tmpfs(mount: Path, code: str, size: str = "1m", timeout: float = 180) -> subprocess.CompletedProcess:
    """Run ``code`` (``MNT``: the tmpfs, a ``Path``) in a child on a tmpfs of ``size`` at ``mount``."""
    mount.mkdir(parents=True, exist_ok=True)
    script = PRELUDE + f"from pathlib import Path\nMNT = Path({str(mount)!r})\n" + textwrap.dedent(code)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(_namespace_cmd(mount, f"size={size}", script), capture_output=True, text=True,
                          timeout=timeout, env=env)


def _result(proc: subprocess.CompletedProcess) -> dict:
    assert proc.stdout.strip(), proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------ full disk
def test_atomic_writes_on_a_full_disk_name_the_file_and_leave_nothing(tmp_path, tmpfs_ok):
    """torch.save (torch's own writer says only 'basic_ios::clear: iostream error'), text, PNG and a
    file inside a folder being built: one PathError line naming the file asked for; the old file is
    kept and no temporary file is left."""
    mnt = tmp_path / "disk"
    proc = _in_tmpfs(mnt, """
        import json
        import numpy as np
        import torch
        from sfsr import io
        from sfsr.errors import PathError

        def attempt(fn):
            try:
                fn()
            except PathError as exc:
                return str(exc)
            except BaseException as exc:
                return f"{type(exc).__name__}: {exc}"
            return None

        ckpt = MNT / "state" / "last.pt"
        io.torch_save(ckpt, {"w": torch.zeros(10)})
        before = ckpt.read_bytes()
        fill(MNT)
        out = {"torch_save": attempt(lambda: io.torch_save(ckpt, {"w": torch.zeros(300_000)})),
               "kept": ckpt.read_bytes() == before,
               "text": attempt(lambda: io.write_text(MNT / "tables" / "a.csv", "x" * 100_000)),
               "image": attempt(lambda: io.save_image(MNT / "a.png", np.full((300, 300, 3), 7, np.uint8)))}
        building = io.make_temp_dir(MNT / "lr")  # a folder built aside, renamed when complete
        out["in_folder"] = attempt(lambda: io.save_image(building / "HR" / "b.png",
                                                         np.full((300, 300, 3), 7, np.uint8)))
        # torch's C++ writer gives no errno: a full file system is recognised by its free space
        write_error = getattr(io, "_write_error", lambda exc, folder: None)
        cause = write_error(RuntimeError("basic_ios::clear: iostream error"), MNT)
        out["statvfs"] = [cause.errno, cause.strerror] if cause is not None else None
        out["files"] = sorted(str(p.relative_to(MNT)) for p in MNT.rglob("*") if p.is_file())
        print(json.dumps(out))
        """)
    out = _result(proc)
    assert out["torch_save"] == f"cannot write {mnt}/state/last.pt: {FULL}", proc.stderr
    assert out["text"] == f"cannot write {mnt}/tables/a.csv: {FULL}"
    assert out["image"] == f"cannot write {mnt}/a.png: {FULL}"
    assert out["in_folder"] == f"cannot write {mnt}/lr/HR/b.png: {FULL}"  # not the hidden folder
    assert out["kept"] and out["statvfs"] == [28, "No space left on device"]
    assert out["files"] == ["filler", "state/last.pt"]  # no temporary file left


def test_the_cli_on_a_full_disk_says_which_file_in_one_line(tmp_path, tmpfs_ok, photo_saver):
    photos = photo_saver(tmp_path / "photos", "astronaut", "coffee")
    mnt = tmp_path / "disk"
    proc = _in_tmpfs(mnt, f"""
        import contextlib, io, json
        from sfsr.cli import main

        fill(MNT)
        runs = {{}}
        for name, argv in {{
                "image": ["upscale", "--quiet", "--scale", "2", {str(photos / 'coffee.png')!r}, str(MNT / "big.png")],
                "folder": ["upscale", "--quiet", "--scale", "2", {str(photos)!r}, str(MNT / "up")],
                "make_lr": ["make-lr", "--quiet", "--scale", "2", {str(photos)!r}, str(MNT / "lr")]}}.items():
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                rc = main(argv)
            runs[name] = [rc, err.getvalue()]
        runs["left"] = sorted(p.name for p in MNT.iterdir())
        print(json.dumps(runs))
        """)
    runs = _result(proc)
    for name, (command, target) in {"image": ("upscale", mnt / "big.png"),
                                    "folder": ("upscale", mnt / "up" / "astronaut.png"),
                                    "make_lr": ("make-lr", mnt / "lr" / "astronaut.png")}.items():
        rc, err = runs[name]
        assert rc == 2 and err == f"sfsr {command}: error: cannot write {target}: {FULL}\n", (name, err)
    assert runs["left"] == ["filler"]  # nothing half-written, no temporary folder


def test_a_job_whose_log_is_on_the_full_disk_still_says_why_it_failed(tmp_path, tmpfs_ok):
    """run_rule: the log on the full disk cannot hide the error; one console line names the file
    (the handler's failed write, or the job's outputs for an error that names no file)."""
    mnt = tmp_path / "disk"
    proc = _in_tmpfs(mnt, """
        import errno, json
        from types import SimpleNamespace
        from sfsr import io
        from sfsr.workflow import run_rule

        fill(MNT)
        def writes(smk):
            print("progress " * 2000)  # the job's stdout goes to its log, which cannot take it
            io.write_text(smk.output[0], "result " * 10_000)
        def nameless(smk):
            raise OSError(errno.ENOSPC, "No space left on device")
        status = {}
        for rule, handler in (("summarize", writes), ("report", nameless)):
            smk = SimpleNamespace(rule=rule, log=[str(MNT / "logs" / f"{rule}.log")], threads=1,
                                  output=[str(MNT / "results" / f"{rule}.csv")],
                                  resources=SimpleNamespace(gpu=0), wildcards={}, config={})
            (MNT / "logs").mkdir(exist_ok=True)
            try:
                run_rule(smk, {rule: handler})
            except SystemExit as exc:
                status[rule] = exc.code
        print(json.dumps(status))
        """)
    assert _result(proc) == {"summarize": 1, "report": 1}, proc.stderr
    err = proc.stderr
    assert "Traceback" not in err and "Logging error" not in err, err
    failed = [line for line in err.splitlines() if "failed:" in line]
    assert failed == [f"[sfsr] rule summarize failed: cannot write {mnt}/results/summarize.csv: {FULL}",
                      f"[sfsr] rule report failed: cannot write {mnt}/results/report.csv: {FULL}"], err
    for rule in ("summarize", "report"):  # and one line saying the log is incomplete
        assert err.count(f"[sfsr] rule {rule}: cannot write {mnt}/logs/{rule}.log: {FULL}") == 1, err


def test_training_on_a_disk_that_fills_stops_in_one_line_and_resumes_identical(tmp_path, tmpfs_ok, photo_saver):
    """The checkpoint folder's disk fills during training: the job stops with one line naming the
    state file; once space is freed the same call resumes and ends with the weights of an
    uninterrupted run."""
    photos = photo_saver(tmp_path / "photos", "astronaut", "coffee")
    mnt = tmp_path / "disk"
    proc = _in_tmpfs(mnt, f"""
        import json, os
        from types import SimpleNamespace
        import torch
        torch.set_num_threads(1)
        from sfsr.training.loop import train
        from sfsr.workflow import run_rule

        cfg = dict(arch="edsr_baseline", scale=2, kwargs=dict(num_blocks=1, num_features=8, base="bicubic"),
                   iterations=6, batch_size=2, lr_patch=8, lr=1e-3, log_every=1, val_every=1000,
                   checkpoint_every=2, num_workers=0, ema_decay=0.9)
        def run(out, **kw):
            return train("warmup", cfg, train_hr_dirs=[{str(photos)!r}], valid_hr_dirs=[{str(photos)!r}],
                         out_dir=out, device="cpu", seed=0, **kw)

        reference = run(Path({str(tmp_path / 'reference')!r}))
        run(MNT / "run", max_iterations=2)  # a state at iteration 2
        fill(MNT)
        smk = SimpleNamespace(rule="train_warmup", log=[{str(tmp_path / 'train.log')!r}], threads=1,
                              output=[str(MNT / "run" / "generator.pt")], resources=SimpleNamespace(gpu=0),
                              wildcards={{}}, config={{}})
        try:
            run_rule(smk, {{"train_warmup": lambda smk: run(MNT / "run")}})
            code = 0
        except SystemExit as exc:
            code = exc.code
        os.remove(MNT / "filler")
        resumed = run(MNT / "run")  # the same call, with space again
        a, b = (torch.load(p, weights_only=True)["state_dict"] for p in (reference, resumed))
        print(json.dumps({{"code": code, "identical": all(torch.equal(a[k], b[k]) for k in a),
                          "left": sorted(p.name for p in (MNT / "run" / "state").iterdir())}}))
        """, size="2m")
    out = _result(proc)
    assert out["code"] == 1 and out["identical"], proc.stderr
    assert [line for line in proc.stderr.splitlines() if "[sfsr]" in line] == \
        [f"[sfsr] rule train_warmup failed: cannot write {mnt}/run/state/last.pt: {FULL}"], proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"cannot write {mnt}/run/state/last.pt" in (tmp_path / "train.log").read_text()
    assert not [name for name in out["left"] if ".tmp" in name]


# ------------------------------------------------------------------------------------ GPU slots
def test_a_gpu_listed_twice_fails_at_once(tmp_path):
    """CUDA_VISIBLE_DEVICES=0,0 with two GPUs asked would wait for ever on one lock."""
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as err:
        gpu_slots.acquire(2, env={"CUDA_VISIBLE_DEVICES": "0,0"}, folder=tmp_path, poll=0.05, timeout=3)
    assert time.monotonic() - t0 < 2
    assert str(err.value) == "CUDA_VISIBLE_DEVICES=0,0 names GPU '0' twice; list each GPU once (e.g. 0)"
    with pytest.raises(ConfigError, match=r"^SFSR_GPU_IDS=1,2,1 names GPU '1' twice; list each GPU once \(e.g. 1,2\)$"):
        gpu_slots.acquire(1, env={"SFSR_GPU_IDS": "1,2,1"}, folder=tmp_path, poll=0.05, timeout=3)
    assert not list(tmp_path.iterdir())  # nothing locked


def test_an_unusable_slot_folder_names_the_variable_and_the_fix(tmp_path):
    a_file = tmp_path / "slots"
    a_file.write_text("not a folder")
    for value, reason in ((a_file, "it is a file, not a folder"),
                          (a_file / "sub", "a part of that path is a file, not a folder")):
        env = {"SFSR_GPU_SLOT_DIR": str(value), "CUDA_VISIBLE_DEVICES": "0,1"}
        with pytest.raises(ConfigError) as err:
            gpu_slots.acquire(1, env=env, poll=0.05, timeout=3)
        assert str(err.value) == (f"SFSR_GPU_SLOT_DIR={value}: cannot keep the GPU slot lock files there "
                                  f"({reason}); set SFSR_GPU_SLOT_DIR to a folder you can write to (made if "
                                  f"missing), or unset it")
    # under SLURM the folder is a subfolder of the variable's value: both are named
    env = {"SFSR_GPU_SLOT_DIR": str(a_file), "SLURM_JOB_ID": "7", "CUDA_VISIBLE_DEVICES": "0"}
    with pytest.raises(ConfigError, match=f"^SFSR_GPU_SLOT_DIR={a_file}: cannot keep the GPU slot lock files "
                                          f"in {a_file}/slurm-7 "):
        gpu_slots.acquire(1, env=env, poll=0.05, timeout=3)
    assert a_file.read_text() == "not a folder"


def test_a_read_only_slot_folder_is_one_line(tmp_path, tmpfs_ok):
    mnt = tmp_path / "ro"
    mnt.mkdir()
    script = PRELUDE + f"""
from sfsr import gpu_slots
from sfsr.errors import ConfigError
try:
    gpu_slots.acquire(1, env={{"SFSR_GPU_SLOT_DIR": {str(mnt)!r}, "CUDA_VISIBLE_DEVICES": "0"}}, poll=0.05, timeout=3)
except ConfigError as exc:
    print(exc)
"""
    proc = subprocess.run(_namespace_cmd(mnt, "size=64k,ro", script), capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == (f"SFSR_GPU_SLOT_DIR={mnt}: cannot keep the GPU slot lock files there "
                                   f"(Read-only file system); set SFSR_GPU_SLOT_DIR to a folder you can write "
                                   f"to (made if missing), or unset it"), proc.stderr

"""Training steps under contention: threading policies quiet and beside a busy core (issue 21 item 3).

    python -m benchmarks --only contention [--repeats 7] [--dry-run]

On a shared 2-core machine one busy core made a training step several times slower, far beyond the
fair share (docs/PERFORMANCE.md, "Threading under contention"): torch's OpenMP threads spin-wait for
a partner the kernel has descheduled. This measures,
in one run, a warm-up training step of each of the default config's warm-up models (``sr_models``
with their kwargs, batch size and LR patch; built through the real code path:
:func:`sfsr.training.settings.stage_config` -> :func:`sfsr.training.parts.build_generator_part` +
:func:`~sfsr.training.parts.build_parts` -> :func:`sfsr.training.step.train_step`) and of
MSRResNet 16x64 (batch 16, LR patch 24, x4, as ``benchmarks/train_speed.py``), for every candidate
threading policy of :data:`CANDIDATES`, quiet and with a competing busy-loop process
(``python -c 'while 1: pass'``, started before and killed after the timed steps of a model).

``OMP_WAIT_POLICY`` and ``GOMP_SPINCOUNT`` are read by libgomp when torch loads it, so each candidate
is a child process of its own (``python -m benchmarks.contention --child``) started with its
environment, which imports torch before sfsr (so sfsr's own policy, :mod:`sfsr.threads`, cannot
change the candidate), except the candidate ``sfsr policy``, which imports sfsr first as every job
does and so measures what sfsr applies. All children are started at once and wait on a pipe; steps are
interleaved (one step per candidate in turn, the order rotated every round, 50 ms between steps so
that the spin-waiting threads of one child do not run into the next one's step), so drift in the load
affects all alike. Warm-up steps are run before the timed ones of each model and phase.

Each row (one per model, candidate and phase) is recorded through the suite's :class:`Recorder`
(machine, commit, torch, load average before/after) with ``speedup_vs_reference`` against the
same model's *quiet* ``default`` (today's policy) -- i.e. the issue's two ratios: quiet throughput /
today's quiet throughput (target >= 0.95) and busy throughput / today's quiet throughput
(target >= 0.45).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"

#: Environment variables that set a child's threading; removed from the parent's environment before a
#: candidate's own are added (so "default" is torch's default, whatever the shell had).
THREAD_ENV = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_PROC_BIND",
              "OMP_DYNAMIC")

#: name -> (environment, inter-op threads or None, import sfsr before torch). ``default`` is torch's
#: own behaviour (libgomp spins ~300000 iterations before sleeping; threads = CPUs).
CANDIDATES: dict[str, tuple[dict[str, str], int | None, bool]] = {
    "default": ({}, None, False),
    "passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, None, False),
    "1 thread": ({"OMP_NUM_THREADS": "1"}, None, False),
    "spincount 1000": ({"GOMP_SPINCOUNT": "1000"}, None, False),
    "spincount 10000": ({"GOMP_SPINCOUNT": "10000"}, None, False),
    "passive + interop 1": ({"OMP_WAIT_POLICY": "PASSIVE"}, 1, False),
    "sfsr policy": ({}, None, True),
}
DRY_CANDIDATES = ["default", "sfsr policy"]
REFERENCE = "default"
#: Pause before each timed step: longer than libgomp's default spin (300000 iterations, a few ms) of
#: the child that ran the step before, which would otherwise take a core from the next one.
SETTLE_S = 0.05

#: MSRResNet as benchmarks/train_speed.py and cpu_ceiling.py time it (issue 14's setting).
MSRRESNET = ("msrresnet_16x64", {"arch": "msrresnet", "scale": 4, "kwargs": {"num_blocks": 16, "num_features": 64},
                                 "warmup": {"batch_size": 16, "lr_patch": 24}})


def default_models(dry_run: bool) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(name, models entry, training section) of the default config's ``sr_models`` and MSRResNet
    16x64; a dry run shrinks every model to one block of 8 features, batch 2, LR patch 8."""
    import yaml

    config = yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8"))
    training = config.get("training") or {}
    entries = [(name, config["models"][name]) for name in config["sr_models"]] + [MSRRESNET]
    out = []
    for name, entry in entries:
        entry = json.loads(json.dumps(entry))  # a copy, and JSON-able for the child's pipe
        entry = {k: entry[k] for k in ("arch", "scale", "kwargs", "warmup") if k in entry}
        if dry_run:
            kw = {"num_blocks": 1, "num_features": 8}
            if entry["arch"] == "rrdbnet":
                kw["growth"] = 4
            entry["kwargs"] = {**entry.get("kwargs", {}), **kw}
            entry["warmup"] = {**(entry.get("warmup") or {}), "batch_size": 2, "lr_patch": 8}
        out.append((name, entry, training))
    return out


# ------------------------------------------------------------------------------------ child


def _reply(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _sfsr_policy() -> dict[str, Any]:
    from sfsr import threads

    return threads.describe()


def child_main(interop: int | None, sfsr_first: bool) -> int:
    """One candidate: import (environment as started), then answer the parent's commands on stdin
    (one JSON object a line): ``setup`` a model (and run warm-up steps), ``steps`` (time n steps),
    ``warmup`` (n untimed steps), ``quit``."""
    import logging

    env = {k: os.environ[k] for k in THREAD_ENV if k in os.environ}  # as started, before sfsr's import
    if sfsr_first:
        import sfsr  # noqa: F401  applies sfsr's threading policy (sfsr.threads) before torch loads
    else:  # the candidate's environment exactly: torch (libgomp) first, sfsr cannot change it
        logging.getLogger("sfsr.threads").setLevel(logging.ERROR)
    import torch

    if interop:
        torch.set_num_interop_threads(interop)
    from sfsr.models import generator_spec
    from sfsr.training.parts import build_generator_part, build_parts
    from sfsr.training.settings import resolve_config, stage_config, stage_weights
    from sfsr.training.speed import speed_flags
    from sfsr.training.stages import STAGES
    from sfsr.training.step import train_step

    _reply({"ready": True, "torch_threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(),
            "env": env, "sfsr_policy": _sfsr_policy() if sfsr_first else None, "pid": os.getpid()})
    st = STAGES["warmup"]
    dev = torch.device("cpu")
    state: dict[str, Any] = {}

    def step() -> float:
        t = time.perf_counter()
        train_step(state["parts"], state["lr"], state["hr"], None)
        return time.perf_counter() - t

    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "quit":
            break
        if op == "setup":
            state.clear()
            config = {"training": cmd["training"], "models": {cmd["model"]: cmd["entry"]}}
            cfg = resolve_config(stage_config(config, cmd["model"], "warmup"), "warmup")
            cfg["device"] = "cpu"
            torch.manual_seed(0)
            flags = speed_flags(cfg, dev)
            spec = generator_spec(cfg["arch"], cfg["scale"], **cfg["kwargs"])
            generator = build_generator_part(st, cfg, spec, dev, flags, None, resuming=False)
            state["parts"] = build_parts(st, cfg, stage_weights("warmup", cfg), generator, dev, flags,
                                         None, None, None)
            b, p, s = int(cfg["batch_size"]), int(cfg["lr_patch"]), int(cfg["scale"])
            state["lr"], state["hr"] = torch.rand(b, 3, p, p), torch.rand(b, 3, p * s, p * s)
            _reply({"ok": True, "batch_size": b, "lr_patch": p, "scale": s, "flags": flags,
                    "parameters": sum(q.numel() for q in generator.parameters())})
        elif op == "warmup":
            for _ in range(cmd["n"]):
                step()
            _reply({"ok": True})
        elif op == "steps":
            _reply({"times": [step() for _ in range(cmd["n"])]})
        else:
            _reply({"error": f"unknown op {op!r}"})
    return 0


# ------------------------------------------------------------------------------------ parent


class Child:
    """A candidate's child process, spoken to over its stdin/stdout."""

    def __init__(self, name: str, env_extra: dict[str, str], interop: int | None, sfsr_first: bool):
        self.name = name
        env = {k: v for k, v in os.environ.items() if k not in THREAD_ENV}
        env.update(env_extra)
        env["PYTHONPATH"] = f"{SRC}{os.pathsep}{REPO}"
        cmd = [sys.executable, "-m", "benchmarks.contention", "--child"]
        if interop:
            cmd += ["--interop", str(interop)]
        if sfsr_first:
            cmd.append("--sfsr-first")
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, bufsize=1)
        self.info: dict[str, Any] = {}

    def read(self) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            raise RuntimeError(f"contention child {self.name!r} ended (exit status {code}); see its stderr above")
        out = json.loads(line)
        if "error" in out:
            raise RuntimeError(f"contention child {self.name!r}: {out['error']}")
        return out

    def ask(self, **cmd: Any) -> dict[str, Any]:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def bench_contention(rec: Any, repeats: int, dry_run: bool, busy: bool = True,
                     candidates: list[str] | None = None, warmup: int | None = None) -> list[dict[str, Any]]:
    """Time every model under every candidate, quiet and (``busy``) beside a busy core; records one
    row per (model, candidate, phase) in ``rec`` and returns them."""
    from benchmarks.__main__ import _load, busy_core

    names = candidates or (DRY_CANDIDATES if dry_run else list(CANDIDATES))
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        raise SystemExit(f"unknown contention candidate(s) {unknown}; known: {', '.join(CANDIDATES)}")
    if REFERENCE not in names:
        names = [REFERENCE, *names]
    warmup = warmup if warmup is not None else (0 if dry_run else 2)
    settle = 0.0 if dry_run else SETTLE_S
    children = {n: Child(n, *CANDIDATES[n]) for n in names}
    rows = []
    try:
        for child in children.values():  # all import torch at once; wait for each
            child.info = child.read()
        for model, entry, training in default_models(dry_run):
            setup = {}
            for busy_now in ([False, True] if busy else [False]):
                with busy_core(busy_now):
                    load = _load()
                    for n, child in children.items():
                        if not busy_now:
                            setup[n] = child.ask(op="setup", model=model, entry=entry, training=training)
                        child.ask(op="warmup", n=warmup)
                    times: dict[str, list[float]] = {n: [] for n in names}
                    for r in range(repeats):  # one step per candidate in turn, the order rotated
                        order = names[r % len(names):] + names[:r % len(names)]
                        for n in order:
                            time.sleep(settle)  # the previous child's threads stop spinning first
                            times[n] += children[n].ask(op="steps", n=1)["times"]
                    for n in names:
                        s = setup[n]
                        info = children[n].info
                        suffix = " + busy core" if busy_now else ""
                        params = {"model": model, "arch": entry["arch"], "kwargs": entry.get("kwargs", {}),
                                  "batch_size": s["batch_size"], "lr_patch": s["lr_patch"], "scale": s["scale"],
                                  "generator_parameters": s["parameters"], "candidate": n,
                                  "competing_busy_process": busy_now, "warmup_steps": warmup,
                                  "env": info["env"], "torch_threads": info["torch_threads"],
                                  "interop_threads": info["interop_threads"], "sfsr_first": CANDIDATES[n][2],
                                  "sfsr_policy": info.get("sfsr_policy")}
                        rows.append(rec.add("contention", f"{model} {n}{suffix}", times[n], params,
                                            load_before=load, reference=f"{model} {REFERENCE}",
                                            values={"loadavg_after": list(os.getloadavg())}))
    finally:
        for child in children.values():
            child.close()
    return rows


def summary(rows: list[dict[str, Any]]) -> str:
    """Per model and candidate: s/step quiet and busy, and the issue's two ratios (throughput against
    today's quiet throughput: ``default`` without a busy core)."""
    by = {(r["parameters"]["model"], r["parameters"]["candidate"], r["parameters"]["competing_busy_process"]): r
          for r in rows}
    models = list(dict.fromkeys(r["parameters"]["model"] for r in rows))
    cands = list(dict.fromkeys(r["parameters"]["candidate"] for r in rows))
    lines = ["| model | candidate | threads | quiet s/step | busy s/step | quiet / today quiet (>= 0.95) | "
             "busy / today quiet (>= 0.45) | load |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for m in models:
        ref = by[(m, REFERENCE, False)]["median_s"]
        for c in cands:
            q, b = by.get((m, c, False)), by.get((m, c, True))
            qr = ref / q["median_s"]
            cells = [m, c, str(q["parameters"]["torch_threads"]), f"{q['median_s']:.3f}",
                     f"{b['median_s']:.3f}" if b else "", f"{qr:.2f}" + (" ok" if qr >= 0.95 else ""),
                     (f"{ref / b['median_s']:.2f}" + (" ok" if ref / b['median_s'] >= 0.45 else "")) if b else "",
                     f"{q['load_before']}-{(b or q)['load_after']}"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benchmarks.contention")
    parser.add_argument("--child", action="store_true", help="(internal) run as one candidate's child")
    parser.add_argument("--interop", type=int)
    parser.add_argument("--sfsr-first", action="store_true")
    args = parser.parse_args(argv)
    if not args.child:
        parser.error("run it through the suite: python -m benchmarks --only contention")
    return child_main(args.interop, args.sfsr_first)


if __name__ == "__main__":
    sys.exit(main())

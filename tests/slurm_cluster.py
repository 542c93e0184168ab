"""A throwaway single-node SLURM cluster on localhost, for tests/test_slurm.py.

Debian's ``slurm-wlm`` (22.05) and ``munge``, installed with apt-get where missing. Everything the
cluster writes (config, munge key and socket, state, spool, logs, pid files) lives in one folder; its
own munged listens on a socket in that folder and the daemons on free ports, so a system munge or
SLURM on the machine is neither used nor disturbed. Node ``<hostname>``: the machine's CPUs, its
memory (at least 16 GB) and one *fake* GPU (a ``gpu`` GRES whose device is /dev/null: enough for
the scheduler to grant ``--gpus=1``; nothing runs on a GPU), in two partitions, ``cpu`` (default) and ``gpu``, the names the
placeholders of ``profiles/slurm/partitions.yaml`` carry. No accounting storage (``sacct`` answers
nothing): clients use ``squeue``/``scontrol`` with ``MinJobAge`` long enough to see finished jobs.

Clients find the cluster through ``SLURM_CONF`` (:attr:`SlurmCluster.env`). :meth:`SlurmCluster.stop`
ends the three daemons it started (by their process ids) and is safe to call more than once.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge")
DAEMONS = ("slurmctld", "slurmd", "munged")


class ClusterUnavailable(Exception):
    """The cluster cannot be had here (not root, no apt-get, install or start failed); the message
    says why."""


def ensure_installed(timeout: float = 600) -> None:
    """Install Debian's slurm-wlm and munge with apt-get where a daemon is missing."""
    if all(shutil.which(d) for d in DAEMONS) and shutil.which("sbatch"):
        return
    if os.geteuid() != 0:
        raise ClusterUnavailable("slurm-wlm/munge are not installed and installing them needs root")
    if not shutil.which("apt-get"):
        raise ClusterUnavailable("slurm-wlm/munge are not installed and there is no apt-get here")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    try:
        proc = subprocess.run(install, capture_output=True, text=True, env=env, timeout=timeout)
        if proc.returncode != 0:  # stale package lists: update once, then try again
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True, env=env, timeout=timeout)
            proc = subprocess.run(install, capture_output=True, text=True, env=env, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as e:
        raise ClusterUnavailable(f"apt-get install {' '.join(PACKAGES)} did not finish: {e}") from e
    if proc.returncode != 0 or not all(shutil.which(d) for d in DAEMONS):
        raise ClusterUnavailable(f"apt-get install {' '.join(PACKAGES)} failed: {proc.stderr[-500:]}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory_mb() -> int:
    """The node's memory for slurm.conf: what the machine has, but at least 16 GB. Memory is not a
    consumable resource here (CR_Core) and slurmd takes the configured value (config_overrides), so
    a small CI machine still takes the profile's default `--mem 8000`."""
    with open("/proc/meminfo") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
    return max(kib // 1024, 16000)


class SlurmCluster:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.root / "etc" / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket.2"
        self.procs: dict[str, subprocess.Popen] = {}
        # Clients find this cluster through SLURM_CONF; inside a job, the SLURM executor's job step
        # (snakemake-executor-plugin-slurm-jobstep) drops every SLURM_* variable before it calls srun,
        # so an `srun` first on PATH puts SLURM_CONF back (a site's srun reads /etc/slurm instead).
        self.bin = self.root / "bin"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf),
                    "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}"}

    # ------------------------------------------------------------------------------ configuration
    def write_config(self) -> None:
        for sub in ("bin", "etc", "state", "spool", "log", "munge"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        srun = self.bin / "srun"
        srun.write_text(f'#!/bin/sh\nexport SLURM_CONF={self.conf}\nexec {shutil.which("srun")} "$@"\n')
        srun.chmod(0o755)
        os.chmod(self.root / "munge", 0o700)
        r = self.root
        cpus = os.cpu_count() or 1
        self.conf.write_text(f"""\
# single-node test cluster (tests/slurm_cluster.py)
ClusterName=sfsrtest
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
SchedulerType=sched/builtin
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
MinJobAge=3600
SlurmdParameters=config_overrides
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={_memory_mb()} Gres=gpu:1 State=UNKNOWN
PartitionName=cpu Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes={self.host} MaxTime=INFINITE State=UP
""")
        (r / "etc" / "cgroup.conf").write_text("CgroupPlugin=cgroup/v1\n")
        # a GPU GRES on /dev/null: the scheduler counts it (without File= slurmd reports 0 GPUs)
        (r / "etc" / "gres.conf").write_text(f"AutoDetect=off\nNodeName={self.host} Name=gpu File=/dev/null Count=1\n")
        key = r / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o600)

    # ------------------------------------------------------------------------------ daemons
    def _start(self, name: str, cmd: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")
        self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                            start_new_session=True)
        log.close()

    def start(self, timeout: float = 60) -> None:
        """Start munged, slurmctld and slurmd; return when the node takes jobs."""
        if os.geteuid() != 0:
            raise ClusterUnavailable("the test cluster's daemons run as root")
        self.write_config()
        m = self.root / "munge"
        self._start("munged", ["munged", "--foreground", "--force", f"--socket={self.munge_socket}",
                               f"--key-file={m / 'munge.key'}", f"--pid-file={m / 'munged.pid'}",
                               f"--log-file={m / 'munged.log'}", f"--seed-file={m / 'munged.seed'}"])
        self._wait(lambda: self.munge_socket.exists(), 10, "munged")
        self._start("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
        self._wait(lambda: self._client("scontrol", "ping").returncode == 0
                   and "UP" in self._client("scontrol", "ping").stdout, timeout, "slurmctld")
        self._start("slurmd", ["slurmd", "-D", "-f", str(self.conf)])
        self._wait(self._node_ready, timeout, "slurmd")

    def _client(self, *cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), capture_output=True, text=True, env=self.env, timeout=30)

    def _node_ready(self) -> bool:
        state = self._client("sinfo", "-h", "-N", "-o", "%T").stdout.split()
        return bool(state) and all(s in ("idle", "mixed", "allocated") for s in state)

    def _wait(self, ready, timeout: float, name: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs[name].poll() is not None:
                raise ClusterUnavailable(f"{name} exited ({self.procs[name].returncode}): {self.logs(name)}")
            if ready():
                return
            time.sleep(0.5)
        raise ClusterUnavailable(f"{name} not ready after {timeout:.0f} s: {self.logs(name)}")

    def logs(self, name: str | None = None, tail: int = 1500) -> str:
        """The last characters of one daemon's log (or of all)."""
        names = [name] if name else list(DAEMONS)
        files = {"munged": [self.root / "munge" / "munged.log"]}
        out = []
        for n in names:
            for path in [self.root / "log" / f"{n}.out", *files.get(n, [self.root / "log" / f"{n}.log"])]:
                if path.exists():
                    out.append(f"--- {path.name}\n{path.read_text(errors='replace')[-tail:]}")
        return "\n".join(out)

    def jobs(self) -> list[dict[str, str]]:
        """Every job slurmctld still remembers (MinJobAge), as scontrol's key=value fields."""
        proc = self._client("scontrol", "show", "job", "--oneliner")
        jobs = []
        for line in proc.stdout.splitlines():
            fields = {}
            for item in line.split():
                key, sep, value = item.partition("=")
                if sep:
                    fields[key] = value
            if fields:
                jobs.append(fields)
        return jobs

    def cancel_all(self, timeout: float = 30) -> None:
        """Cancel every job of this cluster and wait until none runs (a job step outlives slurmd)."""
        if "slurmctld" not in self.procs or self.procs["slurmctld"].poll() is not None:
            return
        self._client("scancel", "--full", "--user=root")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._client("squeue", "-h", "-o", "%i").stdout.strip():
            time.sleep(0.5)

    def stop(self) -> None:
        """End the daemons this object started (slurmd, slurmctld, munged), by process id."""
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

"""A throwaway one-node Slurm cluster in a temporary folder for the Slurm tests (Debian's slurm-wlm and munge).

Everything is private to the folder: munged with its own key and socket, slurmctld and slurmd on free ports above
16000, their state, spool, pid and log files, and two stand-in GPU device files so `--gpus-per-node` schedules and
Slurm sets CUDA_VISIBLE_DEVICES on a host without GPUs. Two partitions, `low` (the default) and `high` (a higher
PriorityTier), with `preempt/partition_prio` and `PreemptMode=REQUEUE`, so preemption is Slurm's own; a job preempted
on `low` gets SIGTERM and 20 s (GraceTime) before the kill, and a requeued job may start again after 10 s
(`cred_expire`, Slurm's default 120 s).

There is no accounting (slurmdbd would need MariaDB), so `sacct` cannot answer; the cluster puts a stand-in `sacct`
first on PATH that prints the same `--parsable2` columns from `squeue --states=all`, which knows every job while the
controller keeps it (MinJobAge, an hour here). That is all submitit asks of sacct.

`start_slurm(nodes=2)` makes the same cluster of two nodes, `n1` and `n2`, each a slurmd of its own on this host
(its own port, spool, pid and log file) with a share of the stand-in GPUs: multi-node allocations, srun across
"nodes" and node-local environments are Slurm's own, only the hardware under them is one.

The daemons run on the host's loopback, not in a network namespace: the clients (sbatch, squeue, submitit in the
test process) would have to enter it too, and free ports on 127.0.0.1 already keep the cluster apart. If the
binaries are absent or the cluster cannot start, the tests that need it skip with the reason; `make slurm-test`
installs them.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from ablations.paths import with_python_path
from tests._support.processes import ROOT

_DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd")
_CLIENTS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo")
_MARK = "SENET_SLURM_ROOT"  # in the daemons' environment, so stop() can find every process they left behind

# Submitit's SlurmInfoWatcher runs `sacct -o JobID,State,NodeList --parsable2 -j ID [-j ID ...]`.
_SACCT = """#!/bin/sh
# Stand-in for sacct on a cluster without accounting: the same --parsable2 columns, from the controller's memory.
ids=""
while [ $# -gt 0 ]; do
  case "$1" in
    -j|--jobs) ids="$ids${ids:+,}$2"; shift 2 ;;
    *) shift ;;
  esac
done
echo "JobID|State|NodeList"
squeue -h --states=all ${ids:+--jobs="$ids"} -o '%i|%T|%N' 2>/dev/null
exit 0  # a job the controller no longer knows is just absent, as sacct would leave it
"""


def _free_port_above(low: int = 16000, spread: bool = True) -> int:
    """A TCP port above `low` on 127.0.0.1 that nothing listens on at the moment of asking (`spread`: starting at an
    offset of this process's own, so that two test runs at once rarely ask for the same)."""
    for port in range(low + 1 + (os.getpid() % 20000 if spread else 0), 65535):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port above {low}")


def _node_line() -> str:
    """The node's hardware as slurmd itself sees it (`slurmd -C`), so the node registers rather than drains."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=30, check=True).stdout
    facts = dict(kv.split("=", 1) for kv in out.split() if "=" in kv)
    keys = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore", "RealMemory")
    return " ".join(f"{k}={facts[k]}" for k in keys if k in facts)


@dataclass
class SlurmCluster:
    """A running cluster: `env` is what clients need (SLURM_CONF, the stand-in sacct on PATH, this checkout on
    PYTHONPATH so jobs can unpickle the tests' functions); `pids` the daemons, stopped by pid."""

    root: Path
    env: dict[str, str]
    gpus: int
    cpus: int
    nodes: tuple[str, ...] = ("localhost",)
    pids: dict[str, int] = field(default_factory=dict)
    start_s: float = 0.0  # seconds from the first daemon to the node idle

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def munge_socket(self) -> Path:
        return self.root / "munge" / "munge.socket"

    def run(self, cmd: list[str] | str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """A client command (`["sbatch", ...]`, or one string run by the shell) against this cluster, from its folder
        (a job's default `slurm-<id>.out` lands there, not in the checkout)."""
        out = subprocess.run(cmd, shell=isinstance(cmd, str), capture_output=True, text=True, env=self.env,
                             timeout=timeout, check=False, cwd=self.root)  # fmt: skip
        if check and out.returncode != 0:
            raise RuntimeError(f"{cmd} failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}")
        return out

    def squeue(self) -> dict[str, str]:
        """Every job the controller knows (finished ones included): job id (`123`, `123_4`) -> state."""
        out = self.run(["squeue", "-h", "--states=all", "-o", "%i|%T"]).stdout
        return dict(line.split("|", 1) for line in out.splitlines() if line)

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, Restarts, Partition, ...)."""
        out = self.run(["scontrol", "-o", "show", "job", job_id]).stdout
        return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)

    def node_state(self, node: str | None = None) -> str:
        """A node's state with its flags (`IDLE`, `MIXED`, `ALLOCATED`, `IDLE+NOT_RESPONDING`, ...); `sinfo` would
        say `idle` before slurmd has even registered. Of several nodes, the first one that is not IDLE."""
        for name in [node] if node else self.nodes:
            out = self.run(["scontrol", "-o", "show", "node", name], check=False).stdout
            state = dict(kv.split("=", 1) for kv in out.split() if "=" in kv).get("State", "")
            if state != "IDLE":
                return state
        return "IDLE"

    def wait_idle(self, timeout: float = 60) -> None:
        """Wait until no job runs or waits and the node is idle again (and slurmd has registered)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            live = [j for j, s in self.squeue().items() if s in ("RUNNING", "PENDING", "COMPLETING", "REQUEUED")]
            if not live and self.node_state() == "IDLE":
                return
            time.sleep(0.2)
        raise AssertionError(f"the node is not idle after {timeout:.0f} s: {self.node_state()!r}, {self.squeue()}")

    def log(self, name: str) -> str:
        path = self.root / "log" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """Cancel every job, then end the daemons and whatever they started, by pid; the folder goes too."""
        if "slurmctld" in self.pids:
            self.run(["scancel", "--full", "--user=root"], check=False)
            end = time.monotonic() + 15
            while time.monotonic() < end and self.run(["squeue", "-h", "-t", "R,CG"], check=False).stdout.strip():
                time.sleep(0.2)
        for name in [*(n for n in self.pids if n.startswith("slurmd")), "slurmctld", "munged"]:
            if name in self.pids:
                _end(self.pids.pop(name))
        for proc in _left_behind(self.root):
            _end(proc.pid)
        shutil.rmtree(self.root, ignore_errors=True)


def _left_behind(root: Path) -> list[psutil.Process]:
    """Processes the daemons started that outlive them (slurmstepd detaches from slurmd)."""
    found = []
    for proc in psutil.process_iter(["name"]):
        try:
            if proc.info["name"].startswith("slurm") and proc.environ().get(_MARK) == str(root):
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def _end(pid: int, grace: float = 10) -> None:
    try:
        proc = psutil.Process(pid)
        proc.send_signal(signal.SIGTERM)
        proc.wait(grace)
    except psutil.NoSuchProcess:
        return
    except psutil.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _read_pid(path: Path, timeout: float = 15) -> int:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            return int(path.read_text().strip())
        except (OSError, ValueError):
            time.sleep(0.05)
    raise RuntimeError(f"{path} never appeared")


def _write_config(root: Path, gpus: int, nodes: tuple[str, ...] = ("localhost",)) -> None:
    dev = root / "dev"
    dev.mkdir()
    files = []
    for i in range(gpus):
        path = dev / f"nvidia{i}"
        try:  # a character device like /dev/null's (1, 3): what slurmd expects of a GPU's File
            os.mknod(path, 0o600 | 0o020000, os.makedev(1, 3))
        except OSError:  # no CAP_MKNOD here: a plain file serves just as well for scheduling
            path.touch()
        files.append(str(path))
    state = {d: root / d for d in ("state", "spool", "log", "run")}
    for d in state.values():
        d.mkdir()
    ctld_port, slurmd_port = _free_port_above(), 0
    while slurmd_port in (0, ctld_port):
        slurmd_port = _free_port_above(ctld_port)
    ports = [slurmd_port]
    while len(ports) < len(nodes):
        ports.append(_free_port_above(ports[-1], spread=False))
    each = gpus // len(nodes)
    if len(nodes) == 1:
        node_lines = f"NodeName=localhost NodeAddr=127.0.0.1 {_node_line()} Gres=gpu:{gpus} State=UNKNOWN"
    else:  # several slurmd on this host: each its own port, and %n (the node's name) in its files' names
        node_lines = "\n".join(f"NodeName={n} NodeHostname=localhost NodeAddr=127.0.0.1 Port={p} {_node_line()} "
                               f"Gres=gpu:{each} State=UNKNOWN" for n, p in zip(nodes, ports, strict=True))  # fmt: skip
        for n in nodes:
            (state["spool"] / n).mkdir()
    mark = "" if len(nodes) == 1 else "-%n"
    spool = state["spool"] if len(nodes) == 1 else state["spool"] / "%n"
    names = ",".join(nodes)
    # cred_expire: a requeued job waits this long before it may start again (Slurm's default, 120 s, would dominate
    # every requeue case)
    auth = f"socket={root / 'munge' / 'munge.socket'},cred_expire=10"
    conf = f"""\
ClusterName=senet-test
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo={auth}
CredType=cred/munge
StateSaveLocation={state["state"]}
SlurmdSpoolDir={spool}
SlurmctldPidFile={state["run"] / "slurmctld.pid"}
SlurmdPidFile={state["run"] / f"slurmd{mark}.pid"}
SlurmctldLogFile={state["log"] / "slurmctld.log"}
SlurmdLogFile={state["log"] / f"slurmd{mark}.log"}
SlurmctldDebug=info
SlurmdDebug=info
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
# quick to stop a job (SIGTERM, then SIGKILL after KillWait), and finished jobs stay visible to squeue for an hour
KillWait=2
MinJobAge=3600
# arrays of at most 3 tasks (indices 0-2), so a larger sweep is submitted in chunks as on a site's 1001
MaxArraySize=3
InactiveLimit=0
SlurmdTimeout=30
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
JobRequeue=1
GresTypes=gpu
{node_lines}
PartitionName=low Nodes={names} Default=YES PriorityTier=1 MaxTime=INFINITE State=UP GraceTime=20
PartitionName=high Nodes={names} PriorityTier=2 MaxTime=INFINITE State=UP
"""
    (root / "slurm.conf").write_text(conf)
    gres = ["AutoDetect=off"]
    for i, n in enumerate(nodes):
        mine = files[i * each : (i + 1) * each]
        named = mine[0] if len(mine) == 1 else f"{dev}/nvidia[{i * each}-{(i + 1) * each - 1}]"
        gres.append(f"NodeName={n} Name=gpu File={named}")
    (root / "gres.conf").write_text("\n".join(gres) + "\n")
    (root / "bin").mkdir()
    sacct = root / "bin" / "sacct"
    sacct.write_text(_SACCT)
    sacct.chmod(0o755)


def start_slurm(gpus: int = 2, nodes: int = 1) -> tuple[SlurmCluster | None, str]:
    """A running cluster with its nodes idle (`gpus` stand-in GPUs shared evenly over `nodes` nodes), or None and the
    reason it could not be had."""
    missing = [b for b in (*_DAEMONS, *_CLIENTS) if shutil.which(b) is None]
    if missing:
        return None, f"{', '.join(missing)} not installed (apt-get install slurm-wlm munge; make slurm-test does this)"
    root = Path(tempfile.mkdtemp(prefix="senet-slurm-"))
    root.chmod(0o700)  # the munge key and socket are this cluster's alone
    names = ("localhost",) if nodes == 1 else tuple(f"n{i + 1}" for i in range(nodes))
    try:
        _write_config(root, gpus, names)
    except (OSError, subprocess.SubprocessError, KeyError) as err:
        shutil.rmtree(root, ignore_errors=True)
        return None, f"could not write the cluster's configuration: {err}"
    env = with_python_path({**os.environ, "SLURM_CONF": str(root / "slurm.conf")}, ROOT)
    env["PATH"] = f"{root / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    for key in [k for k in env if k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")) and k != "SLURM_CONF"]:
        del env[key]  # a test run inside someone's Slurm job must not aim at their cluster
    cluster = SlurmCluster(root, env, gpus, os.cpu_count() or 1, names)
    daemon_env = {**env, _MARK: str(root)}
    began = time.monotonic()
    try:
        _start_daemons(cluster, daemon_env)
        end = time.monotonic() + 60
        while cluster.node_state() != "IDLE":
            if time.monotonic() > end:
                why = f"the node never became idle ({cluster.node_state()!r})"
                raise RuntimeError(f"{why}: {cluster.log('slurmd')[-400:]}")
            time.sleep(0.1)
    except (RuntimeError, OSError, subprocess.SubprocessError) as err:
        cluster.stop()
        return None, str(err)[:600]
    cluster.start_s = time.monotonic() - began
    return cluster, ""


def _start_daemons(cluster: SlurmCluster, env: dict[str, str]) -> None:
    root = cluster.root
    munge = root / "munge"
    munge.mkdir(mode=0o700)
    key = munge / "munge.key"
    subprocess.run(["mungekey", "--create", f"--keyfile={key}"], env=env, capture_output=True, timeout=30, check=True)
    # --force: munged wants a socket every user can reach; this one sits in a 0700 folder, for root's daemons only
    files = [f"--key-file={key}", f"--pid-file={munge / 'munged.pid'}", f"--seed-file={munge / 'munged.seed'}"]
    _daemon(
        ["munged", f"--socket={cluster.munge_socket}", *files, f"--log-file={root / 'log' / 'munged.log'}", "--force"],
        env,
    )
    cluster.pids["munged"] = _read_pid(munge / "munged.pid")
    conf = str(cluster.conf)
    _daemon(["slurmctld", "-f", conf, "-i"], env)  # -i: a fresh folder has no saved state to recover
    cluster.pids["slurmctld"] = _read_pid(root / "run" / "slurmctld.pid")
    for node in cluster.nodes:
        _daemon(["slurmd", "-f", conf, "-N", node], env)
        pid_file = "slurmd.pid" if cluster.nodes == ("localhost",) else f"slurmd-{node}.pid"
        cluster.pids["slurmd" if cluster.nodes == ("localhost",) else f"slurmd-{node}"] = _read_pid(
            root / "run" / pid_file
        )


def _daemon(cmd: list[str], env: dict[str, str]) -> None:
    """Start a daemon that forks into the background itself; its own pid file says where it went."""
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30, check=False, start_new_session=True)
    if out.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed to start ({out.returncode}): {(out.stderr or out.stdout).strip()[:400]}")

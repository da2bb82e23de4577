"""A DDP group across several nodes under `--launcher slurm`, on a throwaway Slurm cluster of two nodes (`n1`, `n2`:
two slurmd on this host, one stand-in GPU each). A trial of `train.devices: 2` on `--gpus-per-node 1` is its own job
of two nodes, one task each: the first node's worker claims and trains it as the group's rank 0, the other node's
task joins each group it starts. Each case checks the promise: every trial trained once, none left RUNNING.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import psutil
import pytest

from ablations.outcomes import Ending
from ablations.sweep.ledger import State
from tests._support.configs import write_spec
from tests._support.processes import ROOT, wait_for
from tests._support.slurm import start_slurm
from tests._support.stores import assert_each_trial_complete_once, attempts, local_ledger

pytest.importorskip("submitit")

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def two_nodes():
    """The two-node cluster for this module; this process's environment points at it while it runs."""
    cluster, why = start_slurm(gpus=2, nodes=2)
    if cluster is None:
        pytest.skip(f"Slurm unavailable: {why}")
    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith(("SLURM_", "SBATCH_"))]:
            mp.delenv(key)
        for key, value in cluster.env.items():
            mp.setenv(key, value)
        yield cluster
    cluster.stop()


def _sweep(cluster, spec: Path, results: Path) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "ablations.cli", "sweep", str(spec), "--results", str(results), "--launcher", "slurm",
           "--gpus-per-node", "1", "--cpus-per-gpu", "1", "--total-gpus", "1", "--no-progress"]  # fmt: skip
    return subprocess.Popen(cmd, env=cluster.env, cwd=ROOT, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def _finish(proc: subprocess.Popen[str], timeout: float = 270) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def _group(found: list) -> list:
    return [a for a in found if a.ticket.config["train"].get("devices") == 2]


def _rank_on(node: int, job: str) -> psutil.Process | None:
    """A running rank of the group on node `node` of Slurm job `job`: a process the launcher spawned (its rank numbers
    are set after the start, so /proc shows only what it inherited: the Slurm task it runs under)."""
    for proc in psutil.process_iter():
        try:
            env, cmd = proc.environ(), " ".join(proc.cmdline())
        except (psutil.Error, OSError):
            continue
        if env.get("SLURM_JOB_ID") == job and env.get("SLURM_PROCID") == str(node) and "spawn_main" in cmd:
            return proc
    return None


def _group_spec(tmp_path: Path) -> Path:
    """One trial of two devices, about 6 s an epoch here over the two nodes: long enough to stop it mid-way."""
    return write_spec(tmp_path, grid={"train.devices": [2]}, seeds=1, train={"epochs": 6, "device": "cpu"},
                      data={"synthetic_train": 800})  # fmt: skip


def test_a_trial_of_two_nodes_is_its_own_job_and_its_group_spans_both(two_nodes, tmp_path):
    spec = write_spec(tmp_path, grid={"train.devices": [1, 2]}, seeds=1, train={"epochs": 3, "device": "cpu"})
    results = tmp_path / "results"
    out = _finish(_sweep(two_nodes, spec, results))
    assert "of 2 nodes × 1 GPUs" in out, out
    url = local_ledger(results)
    assert_each_trial_complete_once(url, results, 2)
    found = attempts(url)
    assert not [a for a in found if a.state != State.COMPLETE], found
    (group,) = _group(found)
    assert group.owner.job and "_" not in group.owner.job, group.owner  # a job of its own, not an array's task
    job = two_nodes.job(group.owner.job)
    assert job["NumNodes"] == "2" and job["NodeList"] == "n[1-2]", job
    (small,) = [a for a in found if a is not group]
    assert small.owner.job not in (None, group.owner.job), small.owner  # the one-device trial: the array's
    assert two_nodes.job(small.owner.job)["NumNodes"] == "1"
    log = (results / "runs" / group.key / "train.log").read_text()
    assert "2 ranks over 2 nodes (1 each)" in log, log
    status = subprocess.run([sys.executable, "-m", "ablations.cli", "status", str(spec), "--results", str(results)],
                            env=two_nodes.env, cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert f"job {group.owner.job} (trial {group.key}, several nodes): 1 COMPLETED" in status.stdout, status.stdout
    (folder,) = (results / "slurm" / "groups").iterdir()
    assert (folder / "over").exists() and (folder / "node-1").is_dir()  # node 2 joined the group, and left


def test_a_rank_killed_on_the_second_node_ends_the_attempt_and_the_retry_resumes_in_the_same_job(two_nodes, tmp_path):
    spec, results = _group_spec(tmp_path), tmp_path / "results"
    proc = _sweep(two_nodes, spec, results)
    url = local_ledger(results)
    wait_for(lambda: [a for a in attempts(url) if a.state == State.RUNNING and a.epoch >= 2], timeout=180)
    (running,) = [a for a in attempts(url) if a.state == State.RUNNING]
    victim = _rank_on(1, running.owner.job)
    assert victim is not None
    victim.send_signal(signal.SIGKILL)
    out = _finish(proc)
    assert_each_trial_complete_once(url, results, 1)
    found = attempts(url)
    ends = Counter(Ending(a.kind) for a in found if a.state == State.FAIL)
    assert ends == {Ending.CRASH: 1}, (found, out)
    assert len({a.owner.job for a in found}) == 1, found  # the retry ran inside the same allocation
    log = next((results / "runs").glob("*/train.log")).read_text()
    assert "resumed" in log and "group 2:" in log, log


def test_a_preempted_group_pauses_on_both_nodes_is_requeued_and_resumes(two_nodes, tmp_path):
    two_nodes.wait_idle()
    spec, results = _group_spec(tmp_path), tmp_path / "results"
    proc = _sweep(two_nodes, spec, results)
    url = local_ledger(results)
    wait_for(lambda: [a for a in attempts(url) if a.state == State.RUNNING and a.epoch >= 1], timeout=180)
    (running,) = [a for a in attempts(url) if a.state == State.RUNNING]
    both = ["--nodes=2", "--gpus-per-node=1", f"--cpus-per-task={two_nodes.cpus}"]
    high = two_nodes.run(["sbatch", "--parsable", "--partition=high", *both, "--wrap", "sleep 3"]).stdout.strip()
    wait_for(lambda: two_nodes.job(running.owner.job).get("Restarts") == "1", timeout=90)
    out = _finish(proc)
    assert two_nodes.job(high)["JobState"] == "COMPLETED"
    assert_each_trial_complete_once(url, results, 1)
    found = attempts(url)
    (stopped,) = [a for a in found if a.state == State.FAIL]
    assert Ending(stopped.kind) == Ending.STOPPED and "paused at" in stopped.reason, (found, out)  # mid-epoch, every
    # rank at one step (not the Stop raised at once that a second signal would make)
    (done,) = [a for a in found if a.state == State.COMPLETE]
    assert done.owner.job == running.owner.job and done.owner.restarts == 1, done.owner  # the requeued run
    log = next((results / "runs").glob("*/train.log")).read_text()
    assert "resumed" in log, log
    assert sorted(p.name for p in (results / "slurm" / "groups").iterdir()) == [f"{done.owner.job}.0",
                                                                               f"{done.owner.job}.1"]  # fmt: skip

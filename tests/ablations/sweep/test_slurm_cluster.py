"""The Slurm test cluster itself (`tests/_support/slurm.py`), and submitit driving it: the ground the Slurm sweep
backend stands on. GPUs are stand-in device files, so what is checked is Slurm's scheduling and environment (which
GPU indices a job is given), not CUDA."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests._support.processes import wait_for

submitit = pytest.importorskip("submitit")

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(120)]


# Run inside the jobs: submitit pickles them by reference, and the jobs import this module from the checkout
# (the cluster puts it on PYTHONPATH).
def square_on_gpu(x: int) -> tuple[int, str]:
    return x * x, os.environ.get("CUDA_VISIBLE_DEVICES", "")


def sleep_then(seconds: float, value: int) -> int:
    time.sleep(seconds)
    return value


def _sbatch(cluster, *args: str) -> str:
    return cluster.run(["sbatch", "--parsable", *args]).stdout.strip().split(";")[0]


def _executor(folder: Path, **params):
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    executor.update_parameters(slurm_partition="low", timeout_min=2, gpus_per_node=1, cpus_per_task=1, **params)
    return executor


def test_a_gpu_job_sees_cuda_visible_devices(slurm_cluster, tmp_path):
    out = tmp_path / "job.out"
    job = _sbatch(slurm_cluster, "--gpus-per-node=1", f"--output={out}",
                  "--wrap", "echo CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES")  # fmt: skip
    wait_for(lambda: slurm_cluster.squeue().get(job) == "COMPLETED", timeout=30)
    assert out.read_text().strip() == "CUDA_VISIBLE_DEVICES=0"
    both = tmp_path / "both.out"
    job = _sbatch(slurm_cluster, f"--gpus-per-node={slurm_cluster.gpus}", f"--output={both}",
                  "--wrap", "echo $CUDA_VISIBLE_DEVICES")  # fmt: skip
    wait_for(lambda: slurm_cluster.squeue().get(job) == "COMPLETED", timeout=30)
    assert both.read_text().strip() == ",".join(str(i) for i in range(slurm_cluster.gpus))


def test_submitit_map_array_returns_every_result(slurm_cluster, tmp_path):
    jobs = _executor(tmp_path).map_array(square_on_gpu, [1, 2, 3])
    assert len({job.job_id.split("_")[0] for job in jobs}) == 1  # one array job, three tasks
    results = [job.result() for job in jobs]
    assert [r[0] for r in results] == [1, 4, 9]
    assert all(r[1] in {str(i) for i in range(slurm_cluster.gpus)} for r in results)  # one stand-in GPU each
    # the states come from the stand-in sacct (squeue underneath), as they would from accounting; a task's result
    # can be read a moment before Slurm calls it complete, and job.state only refreshes every few seconds
    wait_for(lambda: [job.get_info(mode="force").get("State") for job in jobs] == ["COMPLETED"] * 3, timeout=30)
    assert [job.state for job in jobs] == ["COMPLETED"] * 3


def test_a_high_partition_job_preempts_and_requeues_a_low_one(slurm_cluster, tmp_path):
    slurm_cluster.wait_idle()
    whole = [f"--cpus-per-task={slurm_cluster.cpus}", f"--gpus-per-node={slurm_cluster.gpus}"]
    low = _sbatch(slurm_cluster, "--partition=low", "--requeue", *whole, f"--output={tmp_path / 'low.out'}",
                  "--open-mode=append", "--wrap", "trap '' TERM; echo started; while :; do sleep 1; done")  # fmt: skip
    wait_for(lambda: slurm_cluster.job(low)["JobState"] == "RUNNING", timeout=30)
    high = _sbatch(slurm_cluster, "--partition=high", *whole, "--wrap", "sleep 300")
    try:
        # the low job ignores the SIGTERM of its 20 s grace time (a job that exits within it ends COMPLETED)
        wait_for(lambda: slurm_cluster.job(high)["JobState"] == "RUNNING", timeout=60)
        after = slurm_cluster.job(low)
        assert after["Restarts"] == "1"
        assert after["JobState"] in ("PENDING", "REQUEUED")  # back in the queue, not failed or cancelled
        # it waits for the node, not for a person: a preempted job is not held
        assert after["Reason"] not in ("JobHeldUser", "JobHeldAdmin")
    finally:
        slurm_cluster.run(["scancel", low, high])
    slurm_cluster.wait_idle(timeout=30)


def test_scancel_of_a_running_array_task_leaves_the_others(slurm_cluster, tmp_path):
    slurm_cluster.wait_idle()
    jobs = _executor(tmp_path).map_array(sleep_then, [120, 2, 2], [0, 1, 2])
    victim = jobs[0]
    wait_for(lambda: slurm_cluster.squeue().get(victim.job_id) == "RUNNING", timeout=30)
    victim.cancel()
    assert [job.result() for job in jobs[1:]] == [1, 2]
    assert wait_for(lambda: victim.done(force_check=True), timeout=30)
    assert victim.state == "CANCELLED"
    assert not victim.paths.result_pickle.exists()

"""`--launcher slurm` end to end on the throwaway one-node Slurm cluster (`tests/_support/slurm.py`): a study trained
through job arrays, a task cancelled mid-trial, a preemption and requeue, a time limit, the controller killed after
submitting, two studies sharing trials. Each case checks the promise: every trial trained once (one COMPLETE
attempt, one FINISHED run), none lost, none left RUNNING, no retry used by the scheduler's stops.

The GPUs are stand-in device files (Slurm schedules them and sets CUDA_VISIBLE_DEVICES), so the trials say
`train.device=cpu`; job states come from the cluster's stand-in sacct (squeue underneath, no accounting).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from ablations.outcomes import Ending
from ablations.sweep.ledger import State
from tests._support.configs import write_spec
from tests._support.processes import ROOT, wait_for
from tests._support.stores import assert_each_trial_complete_once, attempts, local_ledger

pytest.importorskip("submitit")

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(300)]

SLOW = {"epochs": 12, "device": "cpu"}  # with SLOW_DATA 0.5-5 s an epoch here: long enough to stop a trial mid-way
SLOW_DATA = {"synthetic_train": 1200}  # (the tiny 160 images take 0.1 s an epoch: a trial ends before a stop lands)


def _spec(tmp_path: Path, name: str = "tiny", train: dict | None = None, **kw) -> Path:
    return write_spec(tmp_path, name=name, train=train or {"epochs": 2, "device": "cpu"}, **kw)


def _sweep(cluster, spec: Path, results: Path, *extra: str, env: dict | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*_sweep_args(spec, results), *extra],
        env={**cluster.env, **(env or {})},
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _finish(proc: subprocess.Popen[str], timeout: float = 240) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def _assert_promise(results: Path, n: int, storage: str | None = None) -> list:
    """n trials trained once each, none lost or RUNNING, no retry used (only real failures would use one)."""
    url = storage or local_ledger(results)
    assert_each_trial_complete_once(url, results, n)
    found = attempts(url)
    assert not [a for a in found if a.state == State.RUNNING]
    ends = Counter(Ending(a.kind) for a in found if a.state == State.FAIL)
    assert not [k for k in ends if k.uses_retry or k.host_loss], ends
    return found


def _running_at(results: Path, epoch: int) -> list:
    return [a for a in attempts(local_ledger(results)) if a.state == State.RUNNING and a.epoch >= epoch]


def test_a_study_trains_through_a_job_array_and_status_shows_its_jobs(slurm_cluster, tmp_path):
    spec, results = _spec(tmp_path), tmp_path / "results"
    out = _finish(_sweep(slurm_cluster, spec, results, "--total-gpus", "2"))
    assert "submitted 2 Slurm array tasks" in out, out
    found = _assert_promise(results, 4)
    owners = {a.owner.job for a in found if a.state == State.COMPLETE}
    assert owners and all(j and "_" in j for j in owners), owners  # trained inside the array's tasks
    status = subprocess.run([sys.executable, "-m", "ablations.cli", "status", str(spec), "--results", str(results)],
                            env=slurm_cluster.env, cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert status.returncode == 0, status.stderr
    assert "4 done" in status.stdout and "Slurm jobs:" in status.stdout, status.stdout
    assert "COMPLETED" in status.stdout, status.stdout  # the tasks left once nothing waited for them
    again = _finish(_sweep(slurm_cluster, spec, results, "--total-gpus", "2"))  # a rerun: nothing to submit
    assert "submitted" not in again, again
    _assert_promise(results, 4)


def test_a_task_cancelled_mid_trial_hands_its_trial_on_and_it_resumes(slurm_cluster, tmp_path):
    spec, results = _spec(tmp_path, train=SLOW, data=SLOW_DATA, seeds=1), tmp_path / "results"  # 2 trials
    proc = _sweep(slurm_cluster, spec, results, "--total-gpus", "1")
    wait_for(lambda: _running_at(results, 2), timeout=120)
    victim = _running_at(results, 2)[0]
    slurm_cluster.run(["scancel", victim.owner.job])
    _finish(proc)
    found = _assert_promise(results, 2)
    mine = [a for a in found if a.key == victim.key]
    assert [Ending(a.kind) for a in mine if a.state == State.FAIL] == [Ending.STOPPED], mine
    assert "resumed" in (results / "runs" / victim.key / "train.log").read_text()


def test_a_preempted_task_is_requeued_and_resumes_from_its_checkpoint(slurm_cluster, tmp_path):
    slurm_cluster.wait_idle()
    spec, results = _spec(tmp_path, train=SLOW, data=SLOW_DATA, seeds=1), tmp_path / "results"
    whole = [f"--cpus-per-task={slurm_cluster.cpus}", f"--gpus-per-node={slurm_cluster.gpus}"]
    proc = _sweep(slurm_cluster, spec, results, "--partition", "low", "--nodes", "1", "--gpus-per-node", "2",
                  "--cpus-per-gpu", str(max(1, slurm_cluster.cpus // 2)))  # fmt: skip
    wait_for(lambda: _running_at(results, 2), timeout=120)
    victim = _running_at(results, 2)[0]
    high = slurm_cluster.run(["sbatch", "--parsable", "--partition=high", *whole, "--wrap", "sleep 3"]).stdout.strip()
    wait_for(lambda: slurm_cluster.job(victim.owner.job).get("Restarts") == "1", timeout=60)
    _finish(proc)
    assert slurm_cluster.job(high)["JobState"] == "COMPLETED"
    found = _assert_promise(results, 2)
    stopped = [a for a in found if a.state == State.FAIL]
    assert stopped and {Ending(a.kind) for a in stopped} == {Ending.STOPPED}, stopped
    assert "resumed" in (results / "runs" / victim.key / "train.log").read_text()
    restarted = {a.owner.restarts for a in found if a.state == State.COMPLETE and a.key == victim.key}
    assert restarted == {1}, restarted  # finished by the requeued run of the same task


def test_a_task_at_its_time_limit_checkpoints_requeues_and_resumes(slurm_cluster, tmp_path):
    slurm_cluster.wait_idle()
    spec, results = (
        # about 45 s of training (1.5 s an epoch of 3,200 8×8 images here): more than one task of 1 minute can give,
        # wherever in its minute Slurm sends the time limit's signal (up to a minute early, so a task may train 0-25 s)
        _spec(
            tmp_path,
            train={"epochs": 30, "device": "cpu"},
            grid={"se.excitation": ["sigmoid"]},
            seeds=1,
            data={"synthetic_train": 3200},
        ),
        tmp_path / "results",
    )
    cmd = [sys.executable, "-m", "ablations.cli", "sweep", str(spec), "--results", str(results), "--launcher",
           "slurm", "--cpus-per-gpu", "1", "--time", "1", "--grace", "30", "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=slurm_cluster.env, cwd=ROOT, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    out = _finish(proc, timeout=280)
    found = _assert_promise(results, 1)
    assert [Ending(a.kind) for a in found if a.state == State.FAIL].count(Ending.STOPPED) >= 1, (found, out)
    assert "resumed" in next((results / "runs").glob("*/train.log")).read_text()


def test_the_controller_killed_after_submitting_then_status_and_a_rerun(slurm_cluster, tmp_path):
    spec, results = _spec(tmp_path, train={"epochs": 6, "device": "cpu"}), tmp_path / "results"
    proc = _sweep(slurm_cluster, spec, results, "--total-gpus", "2")
    wait_for(lambda: _running_at(results, 1), timeout=120)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    status = subprocess.run([sys.executable, "-m", "ablations.cli", "status", str(spec), "--results", str(results)],
                            env=slurm_cluster.env, cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert "Slurm jobs:" in status.stdout and "RUNNING" in status.stdout, status.stdout
    assert ", Slurm job " in status.stdout, status.stdout  # a running trial names the job it runs in
    out = _finish(_sweep(slurm_cluster, spec, results, "--total-gpus", "2"))  # attaches: its jobs still run
    assert "submitted" not in out, out
    _assert_promise(results, 4)


def test_two_studies_sharing_trials_train_each_once(slurm_cluster, tmp_path):
    one = _spec(tmp_path, name="one", grid={"se.excitation": ["sigmoid", "tanh"]})
    two = _spec(tmp_path, name="two", grid={"se.excitation": ["tanh", "relu"]})
    tree = yaml.safe_load(two.read_text())
    two.write_text(yaml.safe_dump({**tree, "reference": {"se.excitation": "tanh"}}))
    results = tmp_path / "results"
    first = _sweep(slurm_cluster, one, results, "--total-gpus", "1")
    time.sleep(1.0)
    second = _sweep(slurm_cluster, two, results, "--total-gpus", "1")
    _finish(first)
    _finish(second)
    found = attempts(local_ledger(results))
    done = Counter(a.key for a in found if a.state == State.COMPLETE)
    assert len(done) == 6 and set(done.values()) == {1}, done  # tanh's 2 trials are the two studies' own
    assert not [a for a in found if a.state == State.RUNNING]
    assert not [a for a in found if a.state == State.FAIL and Ending(a.kind).uses_retry]


def test_cancel_ends_only_the_jobs_the_study_submitted(slurm_cluster, tmp_path):
    spec, results = _spec(tmp_path, train=SLOW, data=SLOW_DATA), tmp_path / "results"
    other = slurm_cluster.run(["sbatch", "--parsable", "--cpus-per-task=1", "--wrap", "sleep 60"]).stdout.strip()
    out = subprocess.run([*_sweep_args(spec, results), "--total-gpus", "1", "--detach"], env=slurm_cluster.env,
                         cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0 and "detached" in out.stderr, out.stderr
    wait_for(lambda: _running_at(results, 1), timeout=120)
    cancel = subprocess.run([sys.executable, "-m", "ablations.cli", "cancel", str(spec), "--results", str(results)],
                            env=slurm_cluster.env, cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert cancel.returncode == 0 and "cancelled Slurm job" in cancel.stdout, cancel.stdout + cancel.stderr
    wait_for(lambda: not [a for a in attempts(local_ledger(results)) if a.state == State.RUNNING], timeout=60)
    assert slurm_cluster.job(other)["JobState"] in ("RUNNING", "PENDING")  # not the study's: left alone
    slurm_cluster.run(["scancel", other])
    ends = [Ending(a.kind) for a in attempts(local_ledger(results)) if a.state == State.FAIL]
    assert ends and set(ends) == {Ending.STOPPED}, ends


def _sweep_args(spec: Path, results: Path) -> list[str]:
    return [sys.executable, "-m", "ablations.cli", "sweep", str(spec), "--results", str(results), "--launcher",
            "slurm", "--cpus-per-gpu", "1", "--time", "10", "--no-progress"]  # fmt: skip


def test_on_postgresql_the_password_reaches_the_tasks_by_environment_only(slurm_cluster, pg, tmp_path):
    url = pg.createdb(f"slurm_{os.getpid()}_{time.time_ns() % 10**6}")
    spec, results = _spec(tmp_path), tmp_path / "results"
    out = _finish(_sweep(slurm_cluster, spec, results, "--total-gpus", "2", env={"SENET_ABLATE_STORAGE": url}))
    assert "SQLite" not in out  # no warning: every node can reach this ledger
    _assert_promise(results, 4, storage=url)
    written = [f for f in (results / "slurm").rglob("*") if f.is_file()]
    assert any(f.suffix == ".pkl" for f in written) and any(f.suffix == ".sh" for f in written), written
    assert not [f for f in written if pg.password.encode() in f.read_bytes()]  # pickles, sbatch scripts, logs


def test_ctrl_c_cancels_the_jobs_and_worker_submits_more_tasks_that_finish_the_study(slurm_cluster, tmp_path):
    spec, results = _spec(tmp_path, train=SLOW, data=SLOW_DATA, seeds=1), tmp_path / "results"
    proc = _sweep(slurm_cluster, spec, results, "--total-gpus", "1")
    wait_for(lambda: _running_at(results, 2), timeout=120)
    job = _running_at(results, 2)[0].owner.job
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-2000:]
    assert f"cancelled Slurm job {job.split('_')[0]}" in out, out[-2000:]
    wait_for(lambda: slurm_cluster.job(job)["JobState"] == "CANCELLED", timeout=30)  # after COMPLETING
    left = attempts(local_ledger(results))
    assert not [a for a in left if a.state == State.RUNNING]  # the controller waited for the checkpoints
    assert {Ending(a.kind) for a in left if a.state == State.FAIL} == {Ending.STOPPED}
    cmd = [*_sweep_args(spec, results), "--total-gpus", "1"]
    cmd[cmd.index("sweep")] = "worker"
    _finish(subprocess.Popen(cmd, env=slurm_cluster.env, cwd=ROOT, text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT))  # fmt: skip
    _assert_promise(results, 2)


def test_cpu_only_tasks_past_the_array_size_cap_go_in_chunks(slurm_cluster, tmp_path):
    spec, results = _spec(tmp_path), tmp_path / "results"  # 4 trials, 4 tasks of 1 worker: arrays of 3 and 1
    out = _finish(_sweep(slurm_cluster, spec, results, "--nodes", "4", "--gpus-per-node", "0", "--workers", "1"))
    submitted = next(line for line in out.splitlines() if "submitted" in line)
    assert "submitted 4 Slurm array tasks (1 CPU workers each" in submitted and "," in submitted, submitted
    _assert_promise(results, 4)
    jobs = {a.owner.job for a in attempts(local_ledger(results)) if a.state == State.COMPLETE}
    assert all(j is not None for j in jobs)


def test_a_search_trains_every_stage_through_job_arrays_and_a_rerun_trains_nothing(slurm_cluster, tmp_path):
    """`search --launcher slurm`: the controller, here, trains nothing; each sweep it runs (the references, a
    batch, a front design's extra seed, the re-evaluation) is an array whose tasks train what it asked and leave."""
    import optuna

    from tests._support.configs import tiny_tree

    tree = {"name": "slurmsearch", "description": "a tiny search on Slurm", "base": tiny_tree(train={"device": "cpu"}),
            "search": {"space": {"se.reduction": [2, 8]}, "objectives": ["final_val_top1_err", "params"],
                       "budget": {"designs": 2}, "seeds": [0], "reevaluate": [5], "random_arm": False,
                       "intensify": 1, "parallel": 2,
                       "reference_point": {"final_val_top1_err": 100, "params": 400_000}}}  # fmt: skip
    spec, results = tmp_path / "slurmsearch.yaml", tmp_path / "results"
    spec.write_text(yaml.safe_dump(tree))
    cmd = [*_sweep_args(spec, results), "--total-gpus", "1"]
    cmd[cmd.index("sweep")] = "search"
    log = tmp_path / "controller.log"

    def run() -> str:
        with open(log, "w") as sink:  # a file: the controller's progress lines would fill a pipe
            code = subprocess.run(cmd, env=slurm_cluster.env, cwd=ROOT, stdout=sink, stderr=sink, timeout=240)
        assert code.returncode == 0, log.read_text()[-3000:]
        return log.read_text()

    out = run()
    assert out.count("submitted 1 Slurm array task") >= 3, out[-3000:]
    study = optuna.load_study(study_name="slurmsearch", storage=f"sqlite:///{results / 'search.db'}")
    front = study.user_attrs["reevaluated"]
    intensified = [t for t in study.trials if t.user_attrs.get("seeds") == [0, 1]]
    assert intensified and front  # a design entered the front and trained its extra seed 1
    # the references (r = 4, none of the designs) and 2 designs at seed 0, the intensified at seed 1, then the
    # front and the references again at seed 5: each once, all inside the arrays' tasks
    found = _assert_promise(results, 2 + 2 + len(intensified) + 2 + len(front))
    assert all(a.owner.job for a in found if a.state == State.COMPLETE)  # each trained inside a Slurm job
    again = run()
    assert "submitted" not in again, again[-2000:]
    _assert_promise(results, 2 + 2 + len(intensified) + 2 + len(front))


def test_a_two_device_trial_trains_as_one_group_inside_an_array_task_of_two_gpus(slurm_cluster, tmp_path):
    """`train.devices: 2` on `--gpus-per-node 2`: the task's worker holds both of the node's (stand-in) GPUs and
    runs the trial's two ranks there (gloo, the trial says cpu); a small trial of the study trains once too."""
    spec = _spec(tmp_path, grid={"train.devices": [1, 2]}, seeds=1)
    results = tmp_path / "results"
    _finish(_sweep(slurm_cluster, spec, results, "--total-gpus", "2", "--gpus-per-node", "2"))
    found = _assert_promise(results, 2)
    group = next(a for a in found if a.state == State.COMPLETE and a.ticket.config["train"].get("devices") == 2)
    assert group.owner.job  # trained inside a Slurm task (one task: a job of its own, not an array)
    log = (results / "runs" / group.key / "train.log").read_text()
    assert "holding GPUs 0,1" in log and "resumed" not in log

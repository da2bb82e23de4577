"""The Slurm launcher's parts that need no cluster: its options and where their defaults come from, the CLI's
refusals (one line, exit 2, nothing written), how an attempt's end is read from its job's state, the owner's job,
the scheduler's repeated notice, and what a task pickles. The cluster cases are in test_slurm_sweep.py."""

from __future__ import annotations

import pickle
import signal

import pytest
import yaml

from ablations.cli import main
from ablations.errors import SenetError
from ablations.outcomes import Ending
from ablations.sweep.ledger import Owner
from ablations.sweep.slurm import JobState, SlurmOptions, chunks, minutes, resolve_options, scheduler_end
from ablations.sweep.slurm_task import ArrayTask, TaskSpec
from ablations.sweep.stops import Stop, Stops
from tests._support.configs import write_spec


@pytest.mark.parametrize(("text", "expected"), [("90", 90), ("1:30:00", 90), ("2-00:00:00", 2880), ("45:30", 46)])
def test_slurm_times_read_as_minutes(text, expected):
    assert minutes(text) == expected


@pytest.mark.parametrize("text", ["soon", "0", "0:30", "1:2:3:4"])
def test_a_time_slurm_would_not_take_is_refused(text):
    with pytest.raises(ValueError):
        minutes(text)


def test_tasks_follow_the_gpus_asked_for_and_never_exceed_the_trials():
    assert SlurmOptions(total_gpus=8, gpus_per_node=4).tasks(pending=100, per_task=4) == 2
    assert SlurmOptions(total_gpus=8, gpus_per_node=1).tasks(pending=3, per_task=1) == 3  # 3 trials: 3 tasks
    assert SlurmOptions(nodes=5, gpus_per_node=0).tasks(pending=100, per_task=2) == 5
    assert SlurmOptions().tasks(pending=0, per_task=1) == 0
    assert chunks(2500, 1001) == [1001, 1001, 498] and chunks(3, 1001) == [3]


def test_the_sbatch_parameters_carry_the_options_and_passthrough():
    opts = SlurmOptions(partition="gpu", gpus_per_node=2, time="2:00:00", mem="32G", account="lab", qos="high",
                        array_parallelism=4, slurm={"constraint": "a100"}, requeue=False)  # fmt: skip
    p = opts.parameters("tiny", cpus=8)
    assert p["slurm_partition"] == "gpu" and p["gpus_per_node"] == 2 and p["timeout_min"] == 120
    assert p["cpus_per_task"] == 8 and p["slurm_mem"] == "32G" and p["slurm_account"] == "lab"
    assert p["slurm_qos"] == "high" and p["slurm_array_parallelism"] == 4
    assert p["slurm_additional_parameters"] == {"no-requeue": True, "constraint": "a100"}
    assert "gpus_per_node" not in SlurmOptions(gpus_per_node=0).parameters("tiny", cpus=2)
    assert p["nodes"] == 1 and "slurm_srun_args" not in p


def test_a_trial_larger_than_a_node_is_a_job_of_whole_nodes_whose_tasks_end_together():
    p = SlurmOptions(gpus_per_node=8, cpus_per_gpu=6).parameters("tiny", cpus=48, nodes=2)
    assert p["nodes"] == 2 and p["tasks_per_node"] == 1 and p["gpus_per_node"] == 8 and p["cpus_per_task"] == 48
    assert p["slurm_srun_args"] == ["--kill-on-bad-exit=1"] and p["slurm_job_name"] == "senet-tiny-group"


def test_the_cli_beats_the_study_which_beats_the_profile(tmp_path, monkeypatch):
    profile = tmp_path / "launcher.yaml"
    profile.write_text(yaml.safe_dump({"slurm": {"partition": "p", "account": "lab", "time": "30",
                                                 "slurm": {"constraint": "v100"}}}))  # fmt: skip
    monkeypatch.setenv("SENET_ABLATE_LAUNCHER_PROFILE", str(profile))
    spec = {"slurm": {"partition": "s", "time": "45", "slurm": {"exclude": "node1"}}}
    opts = resolve_options({"time": "50", "total_gpus": None}, spec, "tiny.yaml")
    assert (opts.partition, opts.account, opts.time_min) == ("s", "lab", 50)
    assert opts.slurm == {"constraint": "v100", "exclude": "node1"}


@pytest.mark.parametrize(
    ("profile", "spec", "cli", "says"),
    [
        ({"slurm": {"tiem": 5}}, {}, {}, "launcher.yaml: slurm.tiem: unknown key"),
        ({}, {"slurm": {"gpus_per_node": -1}}, {}, "tiny.yaml: launcher.slurm.gpus_per_node"),
        ({}, {"kubernetes": {}}, {}, "tiny.yaml: launcher.kubernetes: unknown launcher; allowed: slurm"),
        ({}, {}, {"total_gpus": 0}, "--total-gpus: Input should be greater than or equal to 1"),
        ({}, {}, {"time": "soon"}, "--time"),
    ],
)
def test_bad_launcher_options_name_their_source_and_field(tmp_path, monkeypatch, profile, spec, cli, says):
    path = tmp_path / "launcher.yaml"
    path.write_text(yaml.safe_dump(profile))
    monkeypatch.setenv("SENET_ABLATE_LAUNCHER_PROFILE", str(path))
    with pytest.raises(SenetError) as err:
        resolve_options(cli, spec, "tiny.yaml")
    assert says in str(err.value)


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--partition", "gpu"], "--partition: only with --launcher slurm"),
        (["--detach"], "--detach: only with --launcher slurm"),
        (["--launcher", "slurm", "--gpus", "0"], "--gpus: not with --launcher slurm"),
        (["--launcher", "slurm", "--time", "soon"], "--time: "),
        (["--launcher", "slurm", "--slurm", "nonsense"], "--slurm: 'nonsense' is not KEY=VALUE"),
        (
            ["--launcher", "slurm", "--gpus-per-node", "2", "--set", "train.devices=3", "--set", "train.batch_size=48"],
            "train.devices: 3 is not allowed for se.excitation=sigmoid with --gpus-per-node 2: a trial larger than one "
            "node takes whole nodes",
        ),
    ],
)
def test_the_cli_refuses_bad_launcher_input_in_one_line_writing_nothing(tmp_path, capsys, extra, says):
    spec, results = write_spec(tmp_path), tmp_path / "results"
    assert main(["sweep", str(spec), "--results", str(results), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err, err
    assert not results.exists()


def test_a_partition_the_cluster_lacks_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, script in {
        "scontrol": "echo 'Partition nope not found' >&2; exit 1",
        "sinfo": "echo gpu; echo cpu",
    }.items():
        (bindir / name).write_text(f"#!/bin/sh\n{script}\n")
        (bindir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{__import__('os').environ['PATH']}")
    spec, results = write_spec(tmp_path), tmp_path / "results"
    assert main(["sweep", str(spec), "--results", str(results), "--launcher", "slurm", "--partition", "nope"]) == 2
    err = capsys.readouterr().err
    assert "--partition: 'nope' is not a partition of this cluster; allowed: cpu, gpu" in err
    assert not results.exists()


@pytest.mark.parametrize(
    ("state", "restarts", "expected"),
    [
        (JobState("RUNNING", 0), 0, None),
        (JobState("COMPLETING", 0), 0, None),  # its processes are still ending: they may say so themselves
        (JobState("CANCELLED", 0), 0, Ending.STOPPED),
        (JobState("PREEMPTED", 0), 0, Ending.STOPPED),
        (JobState("TIMEOUT", 0), 0, Ending.STOPPED),
        (JobState("PENDING", 1), 0, Ending.STOPPED),  # requeued: that run is over
        (JobState("RUNNING", 1), 0, Ending.STOPPED),  # requeued and running again: a new run, not that worker
        (JobState("NODE_FAIL", 0), 0, Ending.LOST),
        (JobState("FAILED", 0), 0, Ending.CRASH),
        (None, 0, None),  # Slurm no longer knows it: the lease decides
    ],
)
def test_an_attempt_is_ended_by_what_slurm_says_of_its_job(state, restarts, expected):
    states = {} if state is None else {"7_1": state}
    verdict = scheduler_end("7_1", restarts, states)
    assert (verdict[0] if verdict else None) == expected


def test_a_worker_names_the_slurm_job_and_run_it_is_in(monkeypatch):
    for key in ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_ID", "SLURM_RESTART_COUNT"):
        monkeypatch.delenv(key, raising=False)
    assert (Owner.me().job, Owner.me().restarts) == (None, 0)
    monkeypatch.setenv("SLURM_JOB_ID", "41")
    assert Owner.me().job == "41"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "40")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    assert (Owner.me().job, Owner.me().restarts) == ("40_3", 2)
    old = {"host": "h", "host_id": "h/b/n", "pid": 1, "start": None, "token": "ab"}  # an owner a ledger holds
    assert Owner(**old).job is None


def test_the_schedulers_notice_again_never_makes_a_pausing_worker_stop_at_once():
    stops = Stops()
    with stops.train():
        stops.handler(signal.SIGUSR2, None)  # the job's notice: checkpoint at the next step
        assert stops.pausing == "SIGUSR2"
        stops.handler(signal.SIGUSR2, None)  # the task's word, or Slurm's again: still the next step
        stops.paused_at -= 2.0  # (a SIGTERM at once is the scheduler's own beside the task's word: test_stops.py)
        with pytest.raises(Stop):
            stops.handler(signal.SIGTERM, None)  # a second, different stop later on is "now", as before
    twice = Stops()
    with twice.train():
        twice.handler(signal.SIGTERM, None)
        twice.handler(signal.SIGTERM, None)  # at once again: Slurm's preemption without a grace time
        assert twice.pausing == "SIGTERM" and not twice.stopped
        twice.paused_at -= 2.0
        with pytest.raises(Stop):
            twice.handler(signal.SIGTERM, None)  # a second stop a while later is "now"
    idle = Stops()
    with pytest.raises(Stop):
        idle.handler(signal.SIGUSR2, None)  # between trials it stops at once
    idle.handler(signal.SIGUSR2, None)  # and a repeat while it ends is ignored


def test_what_a_task_pickles_holds_no_url_or_secret():
    task = ArrayTask(TaskSpec("tiny", "/shared/results", {"train.epochs": 2}, 1, "1", 1, 1, 50, None, 90))
    blob = pickle.dumps(task)
    assert b"postgresql" not in blob and b"sqlite" not in blob
    assert pickle.loads(blob).spec == task.spec


def _stand_in_squeue(tmp_path, monkeypatch, line: str | None) -> None:
    """`squeue` answering `line` for every job (None: no squeue at all). Slurm's word that a job is over would take
    a real job killed at its time limit mid-trial; the reconciler only reads that word."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    squeue = bindir / "squeue"
    squeue.unlink(missing_ok=True)
    if line is not None:
        squeue.write_text(f"#!/bin/sh\necho '{line}'\n")
        squeue.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin" if line is not None else "/usr/bin/nonexistent")


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("9_0|RUNNING|0|", None),  # the worker is gone but its job runs: Slurm may be ending it, wait for its word
        ("9_0|TIMEOUT|0|", Ending.STOPPED),  # the time limit killed it: the scheduler's end, no retry used
        ("9_0|PENDING|1|", Ending.STOPPED),  # requeued
        ("9_0|NODE_FAIL|0|", Ending.LOST),
        (None, Ending.CRASH),  # no Slurm to ask: a dead worker is a crash, as on any host
    ],
)
def test_a_dead_workers_attempt_is_judged_by_its_jobs_state(tmp_path, monkeypatch, answer, expected):
    import subprocess

    from ablations.study.load import load_spec
    from ablations.study.trials import expand
    from ablations.sweep.ledger import Ledger, State
    from ablations.sweep.reconcile import Reconciler
    from ablations.sweep.status import ticket_of

    trial = expand(load_spec(write_spec(tmp_path, grid={"se.excitation": ["sigmoid"]}, seeds=1)), {})[0]
    ledger = Ledger.open(str(tmp_path / "ledger.db"))
    ledger.enqueue(ticket_of(trial))
    dead = subprocess.Popen(["true"])
    dead.wait()
    me = Owner.me()
    owner = Owner(me.host, me.host_id, dead.pid, None, "cafe", job="9_0", restarts=0)
    assert ledger.claim({trial.key}, owner) is not None
    _stand_in_squeue(tmp_path, monkeypatch, answer)
    for key in ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_ID"):
        monkeypatch.delenv(key, raising=False)
    _, ended = Reconciler(ledger, lambda _: None, slurm=True).reconcile({}, max_retries=1)
    assert [e.kind for e in ended] == ([] if expected is None else [expected])
    left = [a for a in ledger.attempts() if a.key == trial.key]
    assert (left[0].state == State.RUNNING) == (expected is None)


def test_the_controller_counts_checkpointed_epochs_as_progress():
    """CI: a task stopped at its (early) time-limit signal trained epochs; three such arrays are not "no progress"."""
    from optuna.trial import TrialState

    from ablations.sweep.launch import epochs_trained
    from ablations.sweep.ledger import Attempt, Ticket

    def attempt(key: str, epoch: int) -> Attempt:
        return Attempt(0, TrialState.FAIL, Ticket(key, {}, key[:12], 0, "x", {}, ["s"]), epoch=epoch)

    a, b = "0123456789ab-s0", "0123456789ab-s1"
    assert epochs_trained([]) == 0
    assert epochs_trained([attempt(a, 28), attempt(a, 56), attempt(b, 3)]) == 59  # each trial's furthest attempt

"""Packing under `--trials-per-gpu auto` on the CPU: the rule for workers per GPU, the probes' and rates' files, the
controller's ramp decided from recorded rates, and a worker asked to leave."""

import math

import pytest
import torch
from optuna.trial import TrialState

from ablations.sweep.ledger import Attempt, Ticket
from ablations.sweep.packing import (
    MAX_PER_GPU,
    Fit,
    Packer,
    Probe,
    Rate,
    earned,
    per_gpu,
    probe_path,
    read_probes,
    read_rates,
    surplus,
    write_probe,
    write_rate,
)
from ablations.sweep.probe import Packed, probe_steps
from ablations.sweep.slots import MAX_SLOTS, Slot, WorkerRecord
from ablations.sweep.start import SweepOptions
from ablations.training.engine import train
from tests._support.configs import tiny_config

RISING = {n: 1000.0 * 1.2 ** (n - 1) for n in range(1, 7)}  # six measured, each worker added brought 20 %
ROOMY = Fit(total_mb=80_000, need_mb=1_000, cores=64, gpus=1)  # 68 fit, 64 cores


# -- the rule -----------------------------------------------------------------------------------------------------
def test_memory_cores_trials_and_throughput_each_bind_in_turn():
    assert per_gpu(Fit(total_mb=80_000, need_mb=15_000, cores=64, gpus=1), 100, RISING) == 4  # 68,000 MB / 15,000
    assert per_gpu(Fit(total_mb=80_000, need_mb=1_000, cores=6, gpus=2), 100, RISING) == 3  # 6 cores over 2 GPUs
    assert per_gpu(ROOMY, 5, RISING) == 5  # five trials left on one GPU
    assert per_gpu(Fit(total_mb=80_000, need_mb=1_000, cores=64, gpus=2), 5, RISING) == 3  # 5 over 2, rounded up
    assert per_gpu(ROOMY, 100, RISING) == 7  # six measured, each earned its place: try a seventh
    assert per_gpu(ROOMY, 100, {1: 1000.0, 2: 1900.0, 3: 1950.0}) == 2  # the third brought 3 %: two stay


def test_the_rule_gives_at_least_one_worker_and_at_most_the_cap():
    assert per_gpu(Fit(total_mb=80_000, need_mb=0, cores=64, gpus=1), 100, RISING) == 1  # nothing measured yet
    assert per_gpu(Fit(total_mb=10_000, need_mb=20_000, cores=64, gpus=1), 100, RISING) == 1  # too big to share
    assert per_gpu(Fit(total_mb=80_000, need_mb=1_000, cores=1, gpus=4), 100, RISING) == 1  # fewer cores than GPUs
    assert per_gpu(ROOMY, 0, RISING) == 1
    ramped = {n: 1000.0 * 1.1**n for n in range(1, 60)}
    assert per_gpu(Fit(total_mb=10**7, need_mb=1, cores=10**4, gpus=1), 10**4, ramped) == MAX_PER_GPU


def test_throughput_adds_one_worker_at_a_time_and_stops_at_the_first_that_did_not_earn_its_place():
    assert earned({}) == 1
    assert earned({1: 1000.0}) == 2
    assert earned({1: 1000.0, 2: 1050.0}) == 3  # 5 % is a clear rise
    assert earned({1: 1000.0, 2: 1049.0}) == 1
    assert earned({1: 1000.0, 2: 1900.0, 3: 1500.0, 4: 5000.0}) == 2  # a later count never undoes the stop
    assert earned({3: 3000.0, 4: 2900.0}) == 3  # counts adopted from an earlier controller
    assert earned({1: 1000.0, 2: 1040.0}, rise=0.03) == 3


def test_workers_leave_beyond_what_memory_and_cores_allow_or_once_measured_throughput_did_not_earn_them():
    flat = {1: 1000.0, 2: 1900.0, 3: 1910.0}
    assert surplus(3, ROOMY, flat) == 1  # measured at three: the third leaves
    assert surplus(3, ROOMY, {1: 1000.0, 2: 1900.0}) == 0  # the third is not measured yet
    assert surplus(4, ROOMY, {}) == 0  # adopted workers, nothing measured: they stay
    assert surplus(4, Fit(total_mb=80_000, need_mb=0, cores=64, gpus=1), {}) == 0  # a configuration not probed yet
    assert surplus(3, Fit(total_mb=80_000, need_mb=30_000, cores=64, gpus=1), RISING) == 1  # only two fit
    assert surplus(1, Fit(total_mb=10_000, need_mb=20_000, cores=64, gpus=1), {}) == 0  # never the last one


# -- what the workers write ---------------------------------------------------------------------------------------
def test_probes_are_kept_per_host_gpu_and_configuration_and_the_context_is_the_first_probes(tmp_path, monkeypatch):
    monkeypatch.setenv("SENET_ABLATE_HOST_ID", "host-a")
    first = Packed(tmp_path, "m1", "GPU-8c2f6f0e").record("a" * 12, peak_mb=700.0, held_mb=520.0, total_mb=80_000.0)
    # a later configuration on the same GPU, probed while other workers share it: their memory is not its context
    later = Packed(tmp_path, "m1", "GPU-8c2f6f0e").record("b" * 12, peak_mb=900.0, held_mb=2_400.0, total_mb=80_000.0)
    other = Packed(tmp_path, "m1", "1").record("a" * 12, peak_mb=710.0, held_mb=480.0, total_mb=40_000.0)
    assert (first.context_mb, later.context_mb, other.context_mb) == (520.0, 520.0, 480.0)
    assert probe_path(tmp_path, "m1", "GPU-8c2f6f0e", "b" * 12).exists()
    assert not probe_path(tmp_path, "m1", "0", "b" * 12).exists()
    assert sorted(read_probes(tmp_path, "m1"), key=lambda p: (p.gpu, p.config_hash)) == [other, first, later]
    assert not list(tmp_path.rglob("*.tmp"))  # written atomically
    assert read_probes(tmp_path, "m2") == []  # another sweep's
    monkeypatch.setenv("SENET_ABLATE_HOST_ID", "host-b")
    assert read_probes(tmp_path, "m1") == []  # GPU 1 of another host is another device
    fresh = Packed(tmp_path, "m1", "1").record("a" * 12, peak_mb=710.0, held_mb=300.0, total_mb=40_000.0)
    assert fresh.context_mb == 300.0


def test_a_probed_configuration_is_not_probed_again_and_one_that_trains_on_the_cpu_never(tmp_path):
    packed = Packed(tmp_path, "m1", "0")
    cuda = tiny_config(train={"device": "cuda"})
    packed.record(cuda.config_hash(), peak_mb=700.0, held_mb=520.0, total_mb=80_000.0)
    packed.probe(cuda, cuda.config_hash())  # on this CPU host a probe would be refused: none was taken
    packed.probe(tiny_config(train={"device": "cpu"}), "c" * 12)
    assert [p.config_hash for p in read_probes(tmp_path, "m1")] == [cuda.config_hash()]


@pytest.mark.parametrize("data", [{}, {"synthetic_channels": 1, "synthetic_size": 12, "synthetic_classes": 10}])
def test_a_probe_steps_the_trials_own_network_at_its_batch_size_on_its_input_shape(data):
    cfg = tiny_config(data=data, train={"batch_size": 16, "eval_batch_size": 40}).resolved()
    assert math.isfinite(probe_steps(cfg, torch.device("cpu")))


def test_a_packed_worker_reports_each_epochs_images_per_second_and_when_it_ran(tmp_path):
    import os

    packed = Packed(tmp_path, "m1", "0")
    cfg = tiny_config(train={"epochs": 2, "device": "cpu"})
    result = train(cfg, None, [packed], log=lambda _: None)
    [rate] = read_rates(tmp_path, "m1").values()
    last = result.history[-1]
    assert (rate.pid, rate.gpu, rate.images_per_s) == (os.getpid(), "0", last["epoch_images_per_s"])
    assert rate.since < rate.began <= rate.ended  # the second epoch, begun after the first
    assert rate.ended - rate.began >= last["epoch_time_s"]  # its training and its validation
    train(cfg.model_copy(update={"seed": 1}), None, [packed], log=lambda _: None)
    [again] = read_rates(tmp_path, "m1").values()
    assert again.since == rate.since and again.began > rate.ended  # one worker: it trains since its first epoch


# -- what the controller decides ----------------------------------------------------------------------------------
def _worker(tmp_path, pid, slot, gpu="0"):
    return WorkerRecord(pid, 100 + pid, slot, gpu, tmp_path / f"{pid}.json")


def _report(results, worker, since, began, images_per_s):
    write_rate(results, "m1", Rate(worker.pid, worker.start, worker.gpu, since, began, began + 10, images_per_s))


def _done(config_hash, reserved_mb):
    ticket = Ticket(f"{config_hash}-s0", {}, config_hash, 0, "x", {}, ["s"])
    return Attempt(0, TrialState.COMPLETE, ticket, memory={"reserved_mb": reserved_mb, "total_mb": 80_000.0})


def test_the_ramp_adds_a_worker_once_each_count_was_measured_side_by_side_and_retires_one_that_did_not_help(tmp_path):
    packer = Packer(tmp_path, "m1", ["0"], cores=16)
    one, two, three = _worker(tmp_path, 11, 0), _worker(tmp_path, 12, 1), _worker(tmp_path, 13, 2)
    small = "a" * 12
    assert packer.plan([one], [], {small}, 40).workers == {"0": 1}  # nothing probed
    write_probe(tmp_path, "m1", Probe("0", small, 500.0, 7_500.0, 80_000.0))
    assert packer.plan([one], [], {small}, 40).workers == {"0": 1}  # probed, no epoch yet
    _report(tmp_path, one, since=0, began=0, images_per_s=1000)
    assert packer.plan([one], [], {small}, 40).workers == {"0": 2}
    _report(tmp_path, two, since=30, began=30, images_per_s=900)
    _report(tmp_path, one, since=0, began=20, images_per_s=950)  # it began before the second worker trained
    plan = packer.plan([one, two], [], {small}, 40)
    assert (plan.workers, plan.retire, packer.rates["0"]) == ({"0": 2}, {}, {1: 1000})
    _report(tmp_path, one, since=0, began=40, images_per_s=950)
    plan = packer.plan([one, two], [], {small}, 40)
    assert (plan.workers, packer.rates["0"]) == ({"0": 3}, {1: 1000, 2: 1850})
    for w, since in ((one, 0), (two, 30), (three, 60)):
        _report(tmp_path, w, since=since, began=70, images_per_s=630)  # 1,890: not 5 % over 1,850
    plan = packer.plan([three, one, two], [], {small}, 40)
    assert (plan.workers, plan.retire) == ({"0": 2}, {"0": [three]})  # the newest leaves after its trial
    assert packer.story("0") == "memory and cores allow 8 workers; images/s by workers: 1: 1,000; 2: 1,850; 3: 1,890"


def test_the_ramp_never_counts_a_report_of_a_reused_pid_or_a_worker_that_has_not_reported(tmp_path):
    packer = Packer(tmp_path, "m1", ["0"], cores=16)
    write_probe(tmp_path, "m1", Probe("0", "a" * 12, 500.0, 7_500.0, 80_000.0))
    one, two = _worker(tmp_path, 11, 0), _worker(tmp_path, 12, 1)
    write_rate(tmp_path, "m1", Rate(one.pid, 999, "0", 0, 0, 10, 1000))  # another process that had pid 11
    assert packer.plan([one], [], {"a" * 12}, 40).workers == {"0": 1}
    _report(tmp_path, one, since=0, began=0, images_per_s=1000)
    assert packer.plan([one, two], [], {"a" * 12}, 40).workers == {"0": 1}  # two live, one reported
    assert packer.rates["0"] == {}


def test_memory_is_planned_for_the_largest_configuration_still_to_train_on_each_gpu(tmp_path):
    packer = Packer(tmp_path, "m1", ["0", "1"], cores=64)
    small, large = "a" * 12, "b" * 12
    for n in range(1, 8):
        packer.rates["0"][n] = packer.rates["1"][n] = 1000.0 * 1.5**n  # throughput would take more
    write_probe(tmp_path, "m1", Probe("0", small, 500.0, 7_500.0, 80_000.0))
    write_probe(tmp_path, "m1", Probe("1", small, 400.0, 7_600.0, 40_000.0))
    write_probe(tmp_path, "m1", Probe("0", large, 500.0, 33_500.0, 80_000.0))
    live = [_worker(tmp_path, 11, 0, "0"), _worker(tmp_path, 12, MAX_SLOTS, "1")]
    assert packer.plan(live, [], {small, large}, 40).workers == {"0": 2, "1": 4}  # 68,000 / 34,000; 34,000 / 8,000
    assert packer.plan(live, [], {small}, 40).workers == {"0": 8, "1": 4}  # the large ones are done
    finished = [_done(small, 16_600.0)]  # a dataset on the device: more than the probe saw
    assert packer.plan(live, finished, {small}, 40).workers == {"0": 3, "1": 2}  # 68,000 / 17,100; 34,000 / 17,000
    assert packer.plan(live, finished, {small}, 3).workers == {"0": 2, "1": 2}  # three trials left over two GPUs
    crowd = [_worker(tmp_path, 20 + n, n, "0") for n in range(3)]
    plan = packer.plan(crowd, [], {"c" * 12}, 40)  # a configuration no probe measured yet
    assert (plan.workers["0"], plan.retire) == (1, {})  # none added before its probe, none sent away for it


def test_auto_starts_one_packed_slot_per_gpu_numbered_as_the_sweep_adds_them(tmp_path):
    opts = SweepOptions(results=tmp_path, gpus=["0", "GPU-8c2f6f0e"], trials_per_gpu=None)
    host = ("0", "GPU-8c2f6f0e")  # every slot knows its host's GPUs: a group trial takes some of them
    assert opts.slots() == [
        Slot(0, "0", packed=True, host=host),
        Slot(MAX_SLOTS, "GPU-8c2f6f0e", packed=True, host=host),
    ]


@pytest.mark.e2e
def test_a_worker_asked_to_leave_finishes_its_trial_and_claims_no_other(tmp_path):
    """The controller's `RETIRE` reaches a worker mid-trial: the trial ends as it would, then the worker exits
    `EXIT_RETIRED` (a clean end, no death of its slot) and leaves the next trial to the others."""
    import signal
    import subprocess
    import sys

    from ablations.paths import STORAGE_ENV, TRACKING_ENV
    from ablations.study.load import load_spec
    from ablations.study.trials import expand
    from ablations.sweep.ledger import Ledger
    from ablations.sweep.manifest import EXIT_RETIRED, Manifest
    from ablations.sweep.packing import RETIRE
    from ablations.sweep.status import ticket_of
    from tests._support.configs import write_spec
    from tests._support.processes import ENV, wait_for
    from tests._support.stores import local_ledger

    spec = load_spec(write_spec(tmp_path, grid={"se.excitation": ["sigmoid"]}, seeds=2, train={"epochs": 12}))
    trials = expand(spec)
    results = tmp_path / "results"
    ledger = Ledger.open(local_ledger(results))
    for t in trials:
        ledger.enqueue(ticket_of(t))
    path = Manifest(spec.name, None, {t.key: ticket_of(t) for t in trials}, max_retries=0).write(results)
    env = {**ENV, STORAGE_ENV: local_ledger(results), TRACKING_ENV: f"sqlite:///{results / 'mlflow.db'}"}
    cmd = [sys.executable, "-m", "ablations.sweep.worker", "--manifest", str(path), "--results", str(results),
           "--slot", "0"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: [a for a in ledger.attempts() if a.state == TrialState.RUNNING], timeout=180)
        proc.send_signal(RETIRE)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
    assert proc.returncode == EXIT_RETIRED, out
    assert sorted(a.state.name for a in ledger.attempts()) == ["COMPLETE", "WAITING"], out
    assert "left its GPU after 1 trials, as its sweep asked" in out


@pytest.mark.e2e
def test_a_packed_sweep_that_measures_nothing_adds_no_worker(tmp_path):
    """The controller's packing on a host without CUDA: its trials train on the CPU, so no worker probes or reports
    and the GPU keeps its first worker for the whole sweep (never one added before a measurement)."""
    from ablations.cli import main
    from tests._support.configs import write_spec
    from tests._support.stores import assert_each_trial_complete_once, local_ledger

    results = tmp_path / "results"
    spec = write_spec(tmp_path)  # four trials
    assert main(["sweep", str(spec), "--results", str(results), "--gpus", "0", "--trials-per-gpu", "auto",
                 "--no-progress"]) == 0  # fmt: skip
    assert_each_trial_complete_once(local_ledger(results), results, 4)
    assert [p.name for p in results.glob("workers/*/slot*.log")] == ["slot0.log"]
    assert not list(results.glob("workers/*/probes")) and not list(results.glob("workers/*/rates"))

"""Slots on the CPU side of the GPU path: device ids (within an inherited CUDA_VISIBLE_DEVICES too), per-slot
environment and GPU permits (packing has its own tests, in test_packing)."""

import fcntl
import multiprocessing
import os
import threading
import time

import pytest

from ablations.errors import SenetError
from ablations.sweep.slots import WAITING, GpuPermit, Slot, cpu_threads, hold_group, host_cores, parse_gpus, worker_env
from ablations.sweep.status import waiting


def test_gpu_ids_are_indices_uuids_or_mig_instances():
    ids = "0,GPU-8c2f6f0e-1d2b-4b8e-9f00-123456789abc,MIG-4f1c2a3b-aaaa-bbbb-cccc-0123456789ab"
    assert parse_gpus(ids) == ids.split(",")
    for bad, why in (("0;1", "not allowed"), ("cuda:0", "not allowed"), ("0,0", "twice")):
        with pytest.raises(SenetError, match=why):
            parse_gpus(bad)


def test_a_slot_gets_its_device_its_thread_share_and_the_shared_compile_caches(tmp_path):
    env = worker_env({"PATH": "/bin"}, Slot(3, "GPU-8c2f6f0e"), threads=4, results=tmp_path)
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-8c2f6f0e" and env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert env["OMP_NUM_THREADS"] == "4" and env["TORCHINDUCTOR_COMPILE_THREADS"] == "4"
    assert env["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path.resolve() / "cache" / "inductor")
    cpu = worker_env({"OMP_NUM_THREADS": "1"}, Slot(0), threads=8, results=tmp_path)
    assert "CUDA_VISIBLE_DEVICES" not in cpu and cpu["OMP_NUM_THREADS"] == "1"  # the user's choice stands
    assert cpu_threads(host_cores()) == 1 and cpu_threads(1) == host_cores() == len(os.sched_getaffinity(0))


def test_gpu_indices_count_the_devices_an_inherited_cuda_visible_devices_leaves(tmp_path):
    uuid = "GPU-8c2f6f0e-1d2b-4b8e-9f00-123456789abc"
    mig = "MIG-4f1c2a3b-aaaa-bbbb-cccc-0123456789ab"
    assert parse_gpus("0,1", None) == ["0", "1"]  # nothing inherited: the host's own indices
    assert parse_gpus("1,0", f"4,{uuid}") == [uuid, "4"]
    assert parse_gpus(f"{mig},1", f"{mig},5") == [mig, "5"]
    with pytest.raises(SenetError) as err:
        parse_gpus("2", "4,5")
    assert str(err.value) == ("--gpus: 2 is not allowed; CUDA_VISIBLE_DEVICES='4,5' from the environment leaves 4, 5 "
                              "visible; allowed: indices 0..1 (of those) or those ids")  # fmt: skip
    for text, visible, why in (
        (uuid, "4,5", "--gpus: GPU-8c2f.* is not allowed; .*allowed: indices 0..1"),
        ("0", "-1", "hides every device; allowed: none$"),
        ("1", "3,-1,4", "leaves 3 visible"),  # CUDA reads up to the first entry that names no device
        (f"0,{uuid}", f"{uuid},5", "names a device twice"),
    ):
        with pytest.raises(SenetError, match=why):
            parse_gpus(text, visible)


def test_an_inherited_device_order_is_kept(tmp_path):
    env = worker_env({"CUDA_DEVICE_ORDER": "FASTEST_FIRST", "CUDA_VISIBLE_DEVICES": "4,5"}, Slot(0, "5"), 1, tmp_path)
    assert (env["CUDA_DEVICE_ORDER"], env["CUDA_VISIBLE_DEVICES"]) == ("FASTEST_FIRST", "5")
    assert worker_env({}, Slot(0, "5"), 1, tmp_path)["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"


def test_a_gpu_outside_the_allocation_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    from ablations.cli import main
    from tests._support.configs import write_spec

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-8c2f6f0e-1d2b-4b8e-9f00-123456789abc")
    results = tmp_path / "results"
    assert main(["sweep", str(write_spec(tmp_path)), "--results", str(results), "--gpus", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--gpus: 1 is not allowed" in err[0] and "allowed: indices 0..0" in err[0], err
    assert not results.exists()


def _hold(results, exclusive, log, name, seconds):
    permit = GpuPermit(results, "0")
    with permit.hold(exclusive):
        log.put((name, "in", time.monotonic()))
        time.sleep(seconds)
        log.put((name, "out", time.monotonic()))


def test_exclusive_holders_run_alone_and_two_of_them_never_deadlock(tmp_path):
    """Permits were taken one at a time: two exclusive OOM retries on one GPU could each hold part and deadlock.
    Now each taker gets the whole device in one step, and a waiting exclusive taker is not starved."""
    ctx = multiprocessing.get_context("spawn")
    log = ctx.Queue()
    plan = [("s1", False, 1.0), ("x1", True, 0.6), ("x2", True, 0.6), ("s2", False, 0.6), ("s3", False, 0.6)]
    procs = []
    for name, exclusive, seconds in plan:
        procs.append(ctx.Process(target=_hold, args=(tmp_path, exclusive, log, name, seconds)))
        procs[-1].start()
        time.sleep(0.15)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0, "a taker never got the GPU"
    events = sorted((log.get(timeout=5) for _ in range(2 * len(plan))), key=lambda e: e[2])
    inside: set[str] = set()
    for name, what, _ in events:
        if what == "in":
            if name.startswith("x"):
                assert not inside, f"{name} entered beside {inside}"
            assert not any(n.startswith("x") for n in inside), f"{name} entered beside an exclusive holder"
            inside.add(name)
        else:
            inside.discard(name)
    shared_together = [n for n, w, _ in events if w == "in"]
    assert shared_together.index("x1") < shared_together.index("s3")  # the gate kept later shared takers out


def test_gpu_permits_are_per_host_on_a_shared_results_folder(tmp_path, monkeypatch):
    """Item 16: permit files carried no host id, so on a results folder shared by hosts GPU 0 of every host was one
    permit. GPU 0 of another host is another device; GPU 0 of this host is the same one."""
    monkeypatch.setenv("SENET_ABLATE_HOST_ID", "host-a")
    here, here_too = GpuPermit(tmp_path, "0"), GpuPermit(tmp_path, "0")
    monkeypatch.setenv("SENET_ABLATE_HOST_ID", "host-b")
    there = GpuPermit(tmp_path, "0")
    order: list[str] = []
    inside = {"there": threading.Event(), "here_too": threading.Event()}

    def take(permit, name):
        with permit.hold(exclusive=True):
            order.append(f"{name} in")
            inside[name].set()

    with here.hold(exclusive=True):
        threads = [threading.Thread(target=take, args=(p, n)) for p, n in ((there, "there"), (here_too, "here_too"))]
        for t in threads:
            t.start()
        assert inside["there"].wait(30), "host B waited for host A's GPU 0"
        order.append("here out")
    for t in threads:
        t.join(timeout=30)
    assert order == ["there in", "here out", "here_too in"]  # this host's second taker waited for the first


def test_a_group_trial_waits_for_a_shared_gpu_says_so_and_then_holds_each_of_its_gpus_alone(tmp_path):
    """A 2-device trial on slot GPU 0 of a host with GPUs 0-2 takes GPUs 0 and 1; a small trial trains on GPU 1:
    the group waits for it (its folder says so, which `status` shows) and then holds both, which its ranks see."""
    folder = tmp_path / "run"
    folder.mkdir()
    training, finish = threading.Event(), threading.Event()

    def small_trial() -> None:
        with GpuPermit(tmp_path, "1").hold(exclusive=False):
            training.set()
            finish.wait(10)

    threading.Thread(target=small_trial).start()
    assert training.wait(5)
    lines: list[str] = []
    held: list[tuple[list[str], str]] = []

    def group_trial() -> None:
        with hold_group(tmp_path, Slot(0, "0", host=("0", "1", "2")), 2, folder, lines.append) as gpus:
            held.append((gpus, os.environ["CUDA_VISIBLE_DEVICES"]))

    group = threading.Thread(target=group_trial)
    group.start()
    deadline = time.monotonic() + 5
    while not (folder / WAITING).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    assert waiting(folder) == ["waiting for GPUs 0,1, each alone: a trial of 2 devices (others train on them now)"]
    assert not held  # GPU 1 is still the small trial's
    with pytest.raises(BlockingIOError):  # and GPU 0 is the group's alone already: no small trial starts there
        fd = os.open(GpuPermit(tmp_path, "0").main, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    finish.set()
    group.join(10)
    assert held == [(["0", "1"], "0,1")] and lines[-1] == "holding GPUs 0,1"
    assert waiting(folder) == [] and os.environ.get("CUDA_VISIBLE_DEVICES") != "0,1"


def test_two_group_trials_that_need_each_others_gpus_never_deadlock(tmp_path):
    """Workers on GPU 0 and GPU 1 each claim a 2-device trial, many times over, at once: both ask for 0 then 1."""
    done: list[int] = []

    def taker(gpu: str) -> None:
        for _ in range(30):
            with hold_group(tmp_path, Slot(int(gpu), gpu, host=("0", "1")), 2, tmp_path, lambda _: None):
                time.sleep(0.001)
        done.append(int(gpu))

    threads = [threading.Thread(target=taker, args=(g,), daemon=True) for g in ("1", "0")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert sorted(done) == [0, 1]


def test_a_group_larger_than_the_hosts_gpus_is_one_line(tmp_path):
    with pytest.raises(SenetError) as err, hold_group(tmp_path, Slot(0, "0", host=("0", "1")), 4, tmp_path, print):
        pass
    assert str(err.value) == ("train.devices: 4 is not allowed on this host, whose sweep has 2 GPU(s) (0,1); allowed: "
                              "1..2, or more GPUs with --gpus")  # fmt: skip

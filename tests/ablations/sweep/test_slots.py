"""Slots on the CPU side of the GPU path: device ids (within an inherited CUDA_VISIBLE_DEVICES too), per-slot
environment and GPU permits (packing has its own tests, in test_packing)."""

import multiprocessing
import os
import threading
import time

import pytest

from ablations.errors import SenetError
from ablations.sweep.slots import GpuPermit, Slot, cpu_threads, host_cores, parse_gpus, worker_env


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

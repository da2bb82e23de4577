"""The ledger: claims, leases and fencing, one reconciler at a time, liveness, a torn journal, keys as paths."""

import multiprocessing
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from ablations.errors import SenetError
from ablations.paths import run_dir
from ablations.sweep.ledger import Attempt, LeaseLost, Ledger, Owner, Ticket, host_id, process_start
from ablations.sweep.reconcile import Reconciler, next_ticket


def ticket(n: int, **changes) -> Ticket:
    fields = {"key": f"{n:012x}-s0", "config": {"train": {"epochs": 1}}, "config_hash": f"{n:012x}", "seed": 0,
              "label": f"t{n}", "factors": {}, "studies": ["s"]}  # fmt: skip
    return Ticket(**{**fields, **changes})


def tickets(n: int) -> dict[str, Ticket]:
    return {t.key: t for t in (ticket(i) for i in range(n))}


@pytest.fixture
def url(tmp_path):
    return str(tmp_path / "ledger.journal")


def test_a_claim_goes_to_one_claimer_who_names_itself(url):
    ledger = Ledger.open(url)
    for t in tickets(2).values():
        ledger.enqueue(t)
    me = Owner.me()
    first = ledger.claim({ticket(0).key, ticket(1).key}, me)
    assert first is not None and first.state == TrialState.RUNNING and first.owner == me and first.beat == 1
    other = Ledger.open(url).claim({ticket(0).key}, Owner.me())  # another process's view: nothing left for it
    assert other is None
    assert ledger.claim({ticket(1).key}, me, serves=lambda t: False) is None  # cannot serve: not claimed


def _claim_all(url: str, out: "multiprocessing.Queue[list[int]]") -> None:
    ledger, mine = Ledger.open(url), []
    while (a := ledger.claim(set(tickets(20)), Owner.me())) is not None:
        mine.append(a.trial_id)
    out.put(mine)


def test_concurrent_claimers_in_four_processes_split_the_queue_without_overlap(url):
    ledger = Ledger.open(url)
    for t in tickets(20).values():
        ledger.enqueue(t)
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(url, out)) for _ in range(4)]
    for p in procs:
        p.start()
    claimed = [trial_id for _ in procs for trial_id in out.get(timeout=120)]
    for p in procs:
        p.join(timeout=60)
    assert sorted(claimed) == sorted(a.trial_id for a in ledger.attempts())  # each exactly once


def test_a_lease_ended_by_the_reconciler_refuses_its_holders_writes(url):
    """The attempt id is a fencing token: a worker judged dead (paused past the grace) cannot complete."""
    holder = Ledger.open(url)
    holder.enqueue(ticket(0))
    attempt = holder.claim({ticket(0).key}, Owner.me())
    reconciler = Ledger.open(url)
    assert reconciler.fail(attempt.trial_id, "lost", "no heartbeat")
    with pytest.raises(LeaseLost):
        holder.update(attempt.trial_id, beat=2)
    with pytest.raises(LeaseLost):
        holder.complete(attempt.trial_id, 1.0, "finished")
    assert not holder.fail(attempt.trial_id, "crash", "too late")  # someone decided first
    [ended] = reconciler.attempts()
    assert (ended.state, ended.kind, ended.outcome) == (TrialState.FAIL, "lost", None)


def _reconcile(url: str, start: float) -> None:
    time.sleep(max(0.0, start - time.time()))
    Reconciler(Ledger.open(url), lambda _: None).reconcile(tickets(10), max_retries=1, blocking=True)


def test_reconcilers_racing_queue_each_trial_once(url):
    """Item 7: idle controllers and workers reconcile every 2 s; two at once used to enqueue a key twice."""
    Ledger.open(url)
    ctx = multiprocessing.get_context("spawn")
    start = time.time() + 3.0  # the processes import, then all reconcile at the same instant
    procs = [ctx.Process(target=_reconcile, args=(url, start)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    waiting = [a.key for a in Ledger.open(url).attempts() if a.state == TrialState.WAITING]
    assert sorted(waiting) == sorted(tickets(10))


def test_the_reconcile_lock_is_exclusive_and_freed_with_its_holder(url):
    ledger, other = Ledger.open(url), Ledger.open(url)
    with ledger.lock() as mine:
        assert mine
        with other.lock(blocking=False) as theirs:
            assert not theirs
    with other.lock(blocking=False) as theirs:
        assert theirs
    code = f"from ablations.sweep.ledger import Ledger\nl = Ledger.open({url!r})\nl._take()\nimport os; os._exit(9)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 9  # died holding it
    with other.lock(blocking=False) as theirs:
        assert theirs


def test_a_torn_last_record_is_dropped_and_the_ledger_goes_on(url, capsys):
    """Item 13: a kill mid-append (or a full disk) left a torn record that made every later command crash."""
    ledger = Ledger.open(url)
    ledger.enqueue(ticket(0))
    with open(url, "ab") as f:
        f.write(b'{"op_code": 5, "worker_id": "x", "trial_id": 0, "user_attr": {"be')  # no newline: torn
    again = Ledger.open(url)
    assert "dropped a torn last record" in capsys.readouterr().err
    again.enqueue(ticket(1))
    assert [a.key for a in Ledger.open(url).attempts()] == [ticket(0).key, ticket(1).key]
    with open(url, "ab") as f:
        f.write(b'{"op_code": 5, "garbage\n')  # a whole line, but not JSON
    assert len(Ledger.open(url).attempts()) == 2


def test_without_the_repair_optuna_cannot_read_on_after_a_torn_record(url):
    """Why the repair exists: the same torn record, then one more append, breaks Optuna's journal reader."""
    Ledger.open(url).enqueue(ticket(0))
    with open(url, "ab") as f:
        f.write(b'{"op_code": 5, "worker_id": "x", "trial_')
    with pytest.raises((ValueError, AssertionError)):  # Optuna 5 fails one way or the other
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(url))
        storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], "other")
        optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(url)).get_all_studies()


def test_damage_before_the_end_is_reported_not_guessed_at(url):
    ledger = Ledger.open(url)
    ledger.enqueue(ticket(0))
    lines = Path(url).read_bytes().split(b"\n")
    lines[1] = b"{damaged"
    Path(url).write_bytes(b"\n".join(lines))
    with pytest.raises(SenetError, match=r"record 2 is damaged"):
        Ledger.open(url)


def test_liveness_settings_belong_to_the_ledger(url, monkeypatch):
    """Item 14: each process took heartbeat period and grace from its own environment."""
    monkeypatch.setenv("SENET_ABLATE_HEARTBEAT_S", "2")
    assert Ledger.open(url).liveness.heartbeat_s == 2
    monkeypatch.setenv("SENET_ABLATE_HEARTBEAT_S", "600")
    other = Ledger.open(url)
    assert (other.liveness.heartbeat_s, other.liveness.grace_s) == (2, 8)


def _running(url: str, owner: Owner | None, beat: int = 1) -> tuple[Ledger, Attempt]:
    ledger = Ledger.open(url)
    ledger.enqueue(ticket(0))
    attempt = ledger.claim({ticket(0).key}, Owner.me())
    if owner is None:
        ledger.update(attempt.trial_id, owner=None)
    else:
        ledger.update(attempt.trial_id, owner=owner.__dict__, beat=beat)
    return ledger, ledger.attempt(attempt.trial_id)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_local_owner_is_judged_by_its_process_at_once(url, monkeypatch):
    monkeypatch.setenv("SENET_ABLATE_HEARTBEAT_S", "60")
    dead = Owner(platform.node(), host_id(), _dead_pid(), None, "t")
    ledger, attempt = _running(url, dead)
    assert Reconciler(ledger, print).verdict(attempt) == ("crash", f"worker {dead.pid} on {dead.host} died mid-trial")
    me = Owner.me()
    reused = Owner(me.host, me.host_id, me.pid, (process_start(me.pid) or 0) + 1, "t")  # a recycled pid
    assert Reconciler(ledger, print).verdict(Attempt(**{**attempt.__dict__, "owner": reused}))[0] == "crash"
    assert Reconciler(ledger, print).verdict(Attempt(**{**attempt.__dict__, "owner": me})) is None


def test_a_host_with_the_same_name_is_judged_by_heartbeat_on_our_own_clock(url, monkeypatch):
    """Item 14: containers sharing a hostname failed each other's trials by pid; wall clocks were compared."""
    monkeypatch.setenv("SENET_ABLATE_HEARTBEAT_S", "0.25")  # grace: 1 s
    twin = Owner(platform.node(), "another-container", _dead_pid(), None, "t")  # its pid means nothing here
    ledger, attempt = _running(url, twin)
    observer = Reconciler(ledger, print)
    assert observer.verdict(attempt) is None
    for beat in range(2, 6):  # it keeps beating: alive however long it runs
        time.sleep(0.4)
        ledger.update(attempt.trial_id, beat=beat)
        assert observer.verdict(ledger.attempt(attempt.trial_id)) is None
    time.sleep(1.3)  # it stops beating (paused or its host died)
    kind, reason = observer.verdict(ledger.attempt(attempt.trial_id))
    assert kind == "lost" and "no heartbeat from" in reason


def test_an_ownerless_claim_is_dead_after_the_claim_grace(url, monkeypatch):
    monkeypatch.setenv("SENET_ABLATE_HEARTBEAT_S", "0.1")  # claim grace: 0.4 s
    ledger, attempt = _running(url, None)
    observer = Reconciler(ledger, print)
    assert observer.verdict(attempt) is None
    time.sleep(0.6)
    assert observer.verdict(attempt)[0] == "lost"


def test_retries_copy_the_last_ticket_and_an_oom_retry_runs_alone(url):
    ledger = Ledger.open(url)
    ledger.enqueue(ticket(0))
    a = ledger.claim({ticket(0).key}, Owner.me())
    ledger.fail(a.trial_id, "oom", "CUDA out of memory")
    again = next_ticket(ticket(0), ledger.attempts(), max_retries=1)
    assert again.number == 2 and again.exclusive and again.config == ticket(0).config
    ledger.enqueue(again)
    b = ledger.claim({ticket(0).key}, Owner.me())
    ledger.fail(b.trial_id, "crash", "bug")
    assert next_ticket(ticket(0), ledger.attempts(), max_retries=1) is None  # two counted failures > 1 retry


def test_a_key_from_the_ledger_never_becomes_a_path_outside_the_results(tmp_path, url):
    """Item 15: a shared database could name a trial `../../x` and make a worker write outside the results."""
    with pytest.raises(SenetError, match="is not a trial key"):
        run_dir(tmp_path, "../../etc/x")
    with pytest.raises(SenetError, match="is not a trial key"):
        Ledger.open(url).enqueue(ticket(0, key="../../evil-s0"))
    assert run_dir(tmp_path, "0123456789ab-s7") == tmp_path / "runs" / "0123456789ab-s7"


def test_a_ledger_of_the_old_layout_is_refused_with_one_line(tmp_path):
    path = tmp_path / "old.journal"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    study = optuna.create_study(study_name="demo", storage=storage)
    study.enqueue_trial({}, user_attrs={"key": "0123456789ab-s0"})
    with pytest.raises(SenetError, match="ledger of senet-ablate 0.1"):
        Ledger.open(str(path))


def test_owner_identity_tells_namespaces_apart():
    assert host_id().startswith(platform.node())
    assert Owner.me().is_local() and os.getpid() == Owner.me().pid

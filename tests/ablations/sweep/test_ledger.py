"""The ledger over both backends: exactly-once transitions by constraints and conditional writes, fencing tokens,
leases judged by the database's clock, lost COMMIT replies, outages, migrations and the journal import."""

import dataclasses
import os
import platform
import threading
import time
from dataclasses import asdict
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from sqlalchemy.exc import IntegrityError, OperationalError

from ablations.errors import SenetError
from ablations.paths import run_dir
from ablations.sweep import _ledger_db as db
from ablations.sweep.ledger import (
    LeaseLost,
    Ledger,
    Liveness,
    Owner,
    State,
    StoreUnavailable,
    Ticket,
    TrialRecord,
    host_id,
    is_local,
    local_file,
)
from ablations.sweep.reconcile import next_ticket
from tests._support.ledgers import BACKENDS, ledger_url

FAST = Liveness(heartbeat_s=0.1, grace_s=0.6, claim_grace_s=0.6)  # stale after 0.6 s of the database's clock


def ticket(n: int, **changes) -> Ticket:
    fields = {"key": f"{n:012x}-s0", "config": {"train": {"epochs": 1}}, "config_hash": f"{n:012x}", "seed": 0,
              "label": f"t{n}", "factors": {}, "studies": ["s"]}  # fmt: skip
    return Ticket(**{**fields, **changes})


@pytest.fixture(params=BACKENDS)
def url(request, tmp_path):
    return ledger_url(request.param, tmp_path, request)


@pytest.fixture
def opened(url):
    """`opened()` opens (another connection to) the test's ledger; all are closed after the test."""
    made: list[Ledger] = []

    def open_(**kw) -> Ledger:
        made.append(Ledger.open(url, **{"liveness": FAST, **kw}))
        return made[-1]

    yield open_
    for ledger in made:
        ledger.close()


def lose_reply_once(ledger: Ledger, monkeypatch) -> None:
    """The next write transaction commits, then its reply is lost (a connection reset after COMMIT)."""
    real, lost = ledger._run, []

    def run(fn, read):
        out = real(fn, read)
        if not read and not lost:
            lost.append(True)
            raise OperationalError("COMMIT", {}, ConnectionResetError("connection reset by peer"))
        return out

    monkeypatch.setattr(ledger, "_run", run)


def running(ledger: Ledger, n: int = 0):
    ledger.enqueue(ticket(n))
    return ledger.claim({ticket(n).key}, Owner.me())


def insert(ledger: Ledger, n: int, number: int, state: str) -> None:
    """A row written past the ledger's own methods (as a damaged or hand-edited ledger could hold it)."""
    row = {"key": ticket(n).key, "number": number, "state": state, "ticket": ticket(n, number=number).to_attrs(),
           "beat": 0, "epoch": 0, "steps": 0, "reason": "", "queued_at": 0.0}  # fmt: skip
    with ledger.engine.begin() as conn:
        conn.execute(sa.insert(db.attempts).values(**row))


# -- queueing --------------------------------------------------------------------------------------------------


def test_enqueue_twice_queues_one_attempt(opened):
    ledger = opened()
    first = ledger.enqueue(ticket(0))
    assert first is not None and ledger.enqueue(ticket(0)) == first  # the same decision twice: one attempt
    assert ledger.enqueue(ticket(0, number=2)) is None  # attempt 1 is live: no second live attempt
    [a] = ledger.attempts()
    assert (a.trial_id, a.state, a.ticket, a.token) == (first, State.WAITING, ticket(0), None)
    assert a.state == TrialState.WAITING  # callers still comparing with Optuna's states read the same


def test_a_retried_enqueue_whose_first_try_committed_is_harmless(opened, monkeypatch):
    """Item 2: a lost COMMIT reply made the retry queue the trial twice."""
    ledger = opened()
    lose_reply_once(ledger, monkeypatch)
    queued = ledger.enqueue(ticket(0))
    assert queued is not None and [a.trial_id for a in ledger.attempts()] == [queued]


def test_reconcilers_racing_to_queue_a_trial_queue_it_once(opened):
    """Item 1: two reconcilers queued the same trial (under a lock that had silently ended). Any number may race
    now: the one-live-attempt constraint makes the losers insert nothing, whatever number they computed."""
    ledgers = [opened() for _ in range(6)]
    start, got = threading.Barrier(len(ledgers)), []

    def queue(i: int) -> None:
        start.wait()
        got.append(ledgers[i].enqueue(ticket(0, number=1 + i % 2)))  # stale reads: some think it is attempt 2

    threads = [threading.Thread(target=queue, args=(i,)) for i in range(len(ledgers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    [a] = ledgers[0].attempts()
    assert a.trial_id in got and set(got) <= {a.trial_id, None}


def test_a_trial_with_a_result_is_never_queued_again(opened):
    ledger = opened()
    a = running(ledger)
    ledger.complete(a, 0.25, "finished")
    assert ledger.enqueue(ticket(0, number=2)) is None
    assert len(ledger.attempts()) == 1


def test_enqueue_all_queues_many_in_few_transactions(opened):
    ledger = opened()
    ids = ledger.enqueue_all([ticket(i) for i in range(150)] + [ticket(3)])
    assert ids[:150] == sorted(ids[:150]) and ids[150] == ids[3]
    reader = opened()  # a process that has read no ticket yet
    assert [a.ticket for a in reader.attempts()] == [ticket(i) for i in range(150)]
    ledger.enqueue(ticket(150))
    assert reader.attempts()[-1].ticket == ticket(150)  # only the new one is read


def test_a_key_from_the_ledger_never_becomes_a_path_outside_the_results(tmp_path, opened):
    """A shared database could name a trial `../../x` and make a worker write outside the results."""
    with pytest.raises(SenetError, match="is not a trial key"):
        run_dir(tmp_path, "../../etc/x")
    with pytest.raises(SenetError, match="is not a trial key"):
        opened().enqueue(ticket(0, key="../../evil-s0"))


# -- claiming --------------------------------------------------------------------------------------------------


def test_a_claim_goes_to_one_claimer_who_is_named_with_a_token(opened):
    ledger = opened()
    ledger.enqueue(ticket(0))
    ledger.enqueue(ticket(1))
    me = Owner.me()
    assert ledger.claim({ticket(1).key}, me, serves=lambda t: False) is None  # cannot serve it: not claimed
    first = ledger.claim({ticket(0).key, ticket(1).key}, me)
    assert (first.key, first.state, first.owner, first.beat) == (ticket(0).key, State.RUNNING, me, 1)
    assert first.token and first.claimed_at == first.beat_at
    assert opened().claim({ticket(0).key}, Owner.me()) is None  # another connection: nothing left of that key
    second = ledger.claim(None, me)
    assert second.key == ticket(1).key and second.token != first.token


def test_claimers_racing_on_two_connections_each_get_distinct_attempts(opened):
    """Item 1's second half: concurrent claimers must never share an attempt (threads, one connection each)."""
    setup = opened()
    setup.enqueue_all([ticket(i) for i in range(12)])
    ledgers = [opened() for _ in range(4)]
    start, got = threading.Barrier(len(ledgers)), [[] for _ in ledgers]

    def claim_all(i: int) -> None:
        start.wait()
        while (a := ledgers[i].claim(None, Owner.me())) is not None:
            got[i].append(a.trial_id)

    threads = [threading.Thread(target=claim_all, args=(i,)) for i in range(len(ledgers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    claimed = [i for mine in got for i in mine]
    assert sorted(claimed) == sorted(a.trial_id for a in setup.attempts())  # each exactly once


def test_two_claimers_of_one_attempt_at_the_same_instant_one_wins(opened):
    setup = opened()
    setup.enqueue(ticket(0))
    ledgers = [opened(), opened()]
    start, won = threading.Barrier(2), []

    def claim(ledger: Ledger) -> None:
        start.wait()
        won.append(ledger.claim({ticket(0).key}, Owner.me()))

    threads = [threading.Thread(target=claim, args=(ledger,)) for ledger in ledgers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(w is None for w in won) == [False, True]


def test_claim_refuses_a_trial_that_already_has_a_result(opened):
    """Item 1: `claim` handed out a queued attempt of a trial with a complete one (two FINISHED runs)."""
    ledger = opened()
    insert(ledger, 0, 1, "COMPLETE")
    insert(ledger, 0, 2, "WAITING")  # only a damaged ledger holds this: enqueue refuses it
    assert ledger.claim(None, Owner.me()) is None


def test_a_retried_claim_whose_first_try_committed_returns_that_claim(opened, monkeypatch):
    ledger = opened()
    ledger.enqueue_all([ticket(0), ticket(1)])
    lose_reply_once(ledger, monkeypatch)
    a = ledger.claim(None, Owner.me())
    states = {x.trial_id: x.state for x in ledger.attempts()}
    assert a.key == ticket(0).key and sorted(states.values()) == [State.RUNNING, State.WAITING]


# -- the holder's writes ---------------------------------------------------------------------------------------


def test_heartbeat_and_update_renew_the_lease_with_progress(opened):
    ledger = opened()
    a = running(ledger)
    time.sleep(0.05)
    ledger.heartbeat(a, epoch=1, steps=40)
    ledger.update(a, run_id="run-1", memory={"reserved_mb": 1.0})
    now = ledger.attempt(a.trial_id)
    assert (now.beat, now.epoch, now.steps, now.run_id, now.memory) == (2, 1, 40, "run-1", {"reserved_mb": 1.0})
    assert now.beat_at > a.beat_at
    with pytest.raises(TypeError, match="unknown fields"):
        ledger.update(a, state="COMPLETE")


def test_a_stale_token_is_refused_everywhere(opened):
    """The token is the fence: once an observer ended the lease (its holder paused past the grace), every later
    write of the old holder is refused, also after the trial was claimed again."""
    holder, observer = opened(), opened()
    a = running(holder)
    assert observer.fail(observer.attempt(a.trial_id), "lost", "no heartbeat")
    for write in (lambda: holder.heartbeat(a), lambda: holder.update(a, epoch=2),
                  lambda: holder.complete(a, 0.1, "finished")):  # fmt: skip
        with pytest.raises(LeaseLost):
            write()
    assert not holder.fail(a, "crash", "too late")  # someone decided first
    observer.enqueue(ticket(0, number=2))
    b = observer.claim(None, Owner.me())
    forged = dataclasses.replace(b, token=a.token)  # the new attempt's id with the old lease's token
    with pytest.raises(LeaseLost):
        holder.heartbeat(forged)
    ended = holder.attempt(a.trial_id)
    assert (ended.state, ended.kind, ended.outcome, ended.reason) == (State.FAIL, "lost", None, "no heartbeat")


def test_complete_stores_the_result_and_a_diverged_value_as_none(opened):
    ledger = opened()
    a = running(ledger)
    summary = {"final_val_top1_err": float("nan"), "epochs": 2}
    ledger.complete(a, float("nan"), "diverged", result=summary, run_id="r", steps=8)
    done = opened().attempt(a.trial_id)
    assert (done.state, done.outcome, done.value, done.run_id, done.steps) == (State.COMPLETE, "diverged", None, "r", 8)
    assert done.result["epochs"] == 2 and done.result["final_val_top1_err"] != done.result["final_val_top1_err"]
    assert done.ended_at is not None


def test_an_end_retried_after_it_committed_is_a_success_not_a_lost_lease(opened, monkeypatch):
    """Item 2's second half: a lost reply on `complete` made the worker end its own COMPLETE run KILLED."""
    ledger = opened()
    a, b = running(ledger, 0), running(ledger, 1)
    lose_reply_once(ledger, monkeypatch)
    ledger.complete(a, 0.2, "finished")  # no LeaseLost
    lose_reply_once(ledger, monkeypatch)
    assert ledger.fail(b, "crash", "bug")  # True: this call ended it
    states = [(x.state, x.value, x.kind) for x in ledger.attempts()]
    assert states == [(State.COMPLETE, 0.2, None), (State.FAIL, None, "crash")]


def test_two_results_or_two_live_attempts_for_one_trial_are_impossible(opened):
    """Constraints, not checks: even writes past the ledger's methods cannot make them."""
    ledger = opened()
    insert(ledger, 0, 1, "COMPLETE")
    with pytest.raises(IntegrityError):
        insert(ledger, 0, 2, "COMPLETE")
    insert(ledger, 1, 1, "WAITING")
    with pytest.raises(IntegrityError):
        insert(ledger, 1, 2, "RUNNING")
    with pytest.raises(IntegrityError):
        insert(ledger, 2, 1, "PAUSED")  # no such state
    assert [(a.key, a.state) for a in ledger.attempts()] == [(ticket(0).key, State.COMPLETE),
                                                            (ticket(1).key, State.WAITING)]  # fmt: skip


def test_set_run_id_converges_on_one_run(opened):
    """Item 3: two sweeps ending together each repaired a COMPLETE trial with a run of its own."""
    setup = opened()
    a = running(setup)
    setup.complete(a, 0.3, "finished")
    ledgers = [opened() for _ in range(4)]
    start, winners = threading.Barrier(len(ledgers)), []

    def repair(i: int) -> None:
        start.wait()
        winners.append(ledgers[i].set_run_id(a.trial_id, f"run-{i}"))

    threads = [threading.Thread(target=repair, args=(i,)) for i in range(len(ledgers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(set(winners)) == 1 and setup.attempt(a.trial_id).run_id == winners[0]
    assert setup.set_run_id(a.trial_id, winners[0]) == winners[0]  # the winner's own retry: still its run


def test_the_first_claim_of_a_parent_run_wins_and_a_stale_one_is_replaced_once(opened, monkeypatch):
    """CI found sweeps starting together each keeping a parent run of their own: the ledger now picks one."""
    ledgers = [opened() for _ in range(4)]
    start, winners = threading.Barrier(len(ledgers)), []

    def claim(i: int) -> None:
        start.wait()
        winners.append(ledgers[i].claim_parent("tiny", f"run-{i}"))

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(ledgers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    [won] = set(winners)
    assert ledgers[0].parent("tiny") == won and ledgers[0].parent("other") is None
    assert ledgers[1].claim_parent("tiny", "late") == won  # a later sweep keeps it
    assert ledgers[1].claim_parent("tiny", "new", stale=won) == "new"  # its run was deleted in MLflow
    assert ledgers[2].claim_parent("tiny", "newer", stale=won) == "new"  # a second repair of the same stale one
    lose_reply_once(ledgers[3], monkeypatch)
    assert ledgers[3].claim_parent("other", "mine") == "mine"  # retried after its commit: still its own


# -- leases by the database's clock ----------------------------------------------------------------------------


def test_expire_ends_a_stale_lease_as_lost(opened):
    ledger = opened()
    a = running(ledger)
    assert ledger.expire() == []
    time.sleep(FAST.grace_s + 0.3)
    [ended] = opened().expire()
    assert (ended.trial_id, ended.state, ended.kind) == (a.trial_id, State.FAIL, "lost")
    assert "no heartbeat for 0.6 s by the ledger's clock" in ended.reason
    assert ledger.expire() == []
    with pytest.raises(LeaseLost):
        ledger.heartbeat(a)


def test_a_paused_observer_cannot_expire_a_lease_being_renewed(opened):
    """Item 6: liveness compared a fresh clock with stale observations, so a paused reconciler declared a healthy
    worker lost. Now the age is taken in the very statement that would end the lease."""
    holder, observer = opened(), opened()
    a = running(holder)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(FAST.heartbeat_s):
            holder.heartbeat(a)

    beating = threading.Thread(target=beat)
    beating.start()
    try:
        observer.attempts()  # what the observer saw before its pause
        time.sleep(3 * FAST.grace_s)  # the observer is paused well past the grace
        assert observer.expire() == []
        assert observer.attempt(a.trial_id).state == State.RUNNING
    finally:
        stop.set()
        beating.join()


def test_a_beat_that_stops_is_expired_even_by_a_late_observer(opened):
    holder, observer = opened(), opened()
    a = running(holder)
    for _ in range(5):
        time.sleep(FAST.heartbeat_s)
        holder.heartbeat(a)
        assert observer.expire() == []
    time.sleep(FAST.grace_s + 0.3)
    assert [e.trial_id for e in observer.expire()] == [a.trial_id]


def test_an_expire_retried_after_it_committed_still_reports_what_it_ended(opened, monkeypatch):
    ledger = opened()
    a = running(ledger)
    time.sleep(FAST.grace_s + 0.3)
    lose_reply_once(ledger, monkeypatch)
    assert [e.trial_id for e in ledger.expire()] == [a.trial_id]


def test_liveness_settings_belong_to_the_ledger(url, monkeypatch):
    """Each process took heartbeat period and grace from its own environment."""
    monkeypatch.setenv("SENET_ABLATE_HEARTBEAT_S", "2")
    first = Ledger.open(url)
    monkeypatch.setenv("SENET_ABLATE_HEARTBEAT_S", "600")
    other = Ledger.open(url)
    assert first.liveness == other.liveness == Liveness(2, 8, 8)
    first.close()
    other.close()


# -- outages ---------------------------------------------------------------------------------------------------


def test_an_outage_past_the_patience_is_store_unavailable_not_a_user_error(url, opened, monkeypatch, pg_admin):
    """Item 5: an outage a little longer than the retry window raised the user-error type (class `config`)."""
    if is_local(url):
        monkeypatch.setattr(db, "BUSY_S", 0.1)
        ledger = opened(retry_s=0.5)
        ledger.enqueue(ticket(0))
        import sqlite3

        blocker = sqlite3.connect(local_file(url), isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another process holding the write lock (paused mid-transaction)
        try:
            with pytest.raises(StoreUnavailable) as caught:
                ledger.enqueue(ticket(1))
            assert len(ledger.attempts()) == 1  # WAL: readers never wait for the writer
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
    else:
        ledger = opened(retry_s=0.5)
        name = sa.make_url(url).database
        pg_admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        pg_admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
        try:
            with pytest.raises(StoreUnavailable) as caught:
                ledger.enqueue(ticket(1))
        finally:
            pg_admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    assert not isinstance(caught.value, SenetError) and "rerun the same command" in str(caught.value)
    assert ledger.enqueue(ticket(1)) is not None  # the store is back: the same ledger goes on


@pytest.mark.parametrize("url", ["postgresql"], indirect=True)  # a SQLite file has no server sessions
def test_a_killed_database_session_is_ridden_out(url, opened, pg_admin):
    """Item 1's cause: a PostgreSQL session ends (restart, pooler, idle timeout); the next call reconnects."""
    ledger = opened()
    a = running(ledger)
    pg_admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{sa.make_url(url).database}'")
    ledger.heartbeat(a)
    assert ledger.attempt(a.trial_id).beat == 2


def test_a_database_that_cannot_be_reached_at_start_is_one_line(pg):
    url = f"postgresql://senet:secret-pw@127.0.0.1:{_closed_port()}/nothing"
    began = time.monotonic()
    with pytest.raises(SenetError, match="unreachable for 0.3 s") as caught:
        Ledger.open(url, patience=0.3)
    assert "secret-pw" not in str(caught.value) and time.monotonic() - began < 5


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def pg_admin(request):
    """`pg_admin(sql)` runs SQL as the throwaway cluster's superuser (PostgreSQL tests only)."""
    engines: list[sa.Engine] = []

    def run(sql: str) -> None:
        if not engines:
            pg = request.getfixturevalue("pg")
            engines.append(sa.create_engine(pg.url("postgres", "psycopg"), isolation_level="AUTOCOMMIT"))
        with engines[0].connect() as conn:
            conn.execute(sa.text(sql))

    yield run
    for engine in engines:
        engine.dispose()


# -- schema ----------------------------------------------------------------------------------------------------


def test_the_schema_version_is_recorded_and_matches_the_tables(opened):
    ledger = opened()
    with ledger.engine.connect() as conn:
        assert db.stored_version(conn) == db.LATEST
        found = sa.inspect(conn)
        for table in db.metadata.sorted_tables:
            assert {c["name"] for c in found.get_columns(table.name)} == set(table.c.keys()), table.name


def test_an_older_ledger_is_upgraded_in_place(url, opened):
    """A later issue appends a step; existing folders keep their attempts (created here at version 1)."""
    engine = db.sqlite_engine(local_file(url)) if is_local(url) else db.postgres_engine(url)
    old = Ledger(engine, url)
    old._tx(lambda c: db.upgrade(c, asdict(FAST), target=1))
    queued = old.enqueue(ticket(0))
    with engine.connect() as conn:
        assert db.stored_version(conn) == 1 and not sa.inspect(conn).has_table(db.trials.name)
        assert not sa.inspect(conn).has_table(db.parents.name)
    engine.dispose()
    ledger = opened()
    assert [a.trial_id for a in ledger.attempts()] == [queued] and ledger.liveness == FAST
    ledger.record_trials("tiny", [TrialRecord(ticket(0).key, ticket(0).config_hash, 0, 2)])
    ledger.record_trials("other", [TrialRecord(ticket(0).key, ticket(0).config_hash, 0, 2)])
    assert ledger.trials("tiny") == ledger.trials("other") == [TrialRecord(ticket(0).key, f"{0:012x}", 0, 2)]
    assert ledger.parent("tiny") is None and ledger.claim_parent("tiny", "run") == "run"
    with ledger.engine.connect() as conn:
        assert db.stored_version(conn) == db.LATEST


def test_a_ledger_of_a_newer_senet_ablate_is_refused(opened, url):
    ledger = opened()
    with ledger.engine.begin() as conn:
        conn.execute(sa.update(db.meta).values(version=db.LATEST + 1))
    with pytest.raises(SenetError, match=f"ledger schema {db.LATEST + 1}, made by a newer senet-ablate"):
        Ledger.open(url)


def test_notes_are_kept_per_study(opened):
    ledger = opened()
    assert ledger.note("tiny") == {}
    ledger.set_note("tiny", {"device": "cpu"})
    ledger.set_note("tiny", {"device": "cuda", "overrides": {"train.epochs": 1}})
    assert opened().note("tiny") == {"device": "cuda", "overrides": {"train.epochs": 1}}


# -- where a SQLite ledger may live ----------------------------------------------------------------------------

MOUNTINFO = r"""22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:40 / /home rw,relatime shared:9 - nfs4 server:/home rw,vers=4.2
31 30 8:2 / /home/me/local\040disk rw,relatime - xfs /dev/sdb1 rw
32 22 0:41 / /scratch rw - lustre 10.0.0.1@tcp:/scratch rw
33 22 0:42 / /mnt/share rw - smb3 //nas/share rw
34 22 0:43 / /mnt/box rw - fuse.sshfs me@box:/ rw
35 22 0:44 / /tmp rw - tmpfs tmpfs rw"""


def test_the_filesystem_of_a_path_is_read_from_mountinfo():
    found = {p: db.filesystem_of(p, MOUNTINFO) for p in ("/results", "/home/me/results", "/home/me/local disk/r",
             "/home", "/homework", "/scratch/x", "/mnt/share/r", "/mnt/box/r", "/tmp/r")}  # fmt: skip
    assert found == {"/results": "ext4", "/home/me/results": "nfs4", "/home/me/local disk/r": "xfs", "/home": "nfs4",
                     "/homework": "ext4", "/scratch/x": "lustre", "/mnt/share/r": "smb3", "/mnt/box/r": "fuse.sshfs",
                     "/tmp/r": "tmpfs"}  # fmt: skip
    assert [db.is_network(f) for f in ("nfs4", "lustre", "smb3", "cifs", "fuse.sshfs", "ext4", "tmpfs")] == [
        True, True, True, True, True, False, False]  # fmt: skip
    assert db.filesystem_of("/x", "garbage\n") is None


def test_a_sqlite_ledger_on_a_network_filesystem_is_refused_with_one_line(tmp_path, monkeypatch):
    """Item 15: a ledger file on NFS/Lustre depended on the lock manager; nothing detected it."""
    monkeypatch.setattr(db, "filesystem_of", lambda path, info: "nfs4")
    with pytest.raises(SenetError, match=r"network filesystem \(nfs4\).*--storage postgresql://"):
        Ledger.open(str(tmp_path / "ledger.db"))
    assert not (tmp_path / "ledger.db").exists()


def test_local_urls_name_their_sqlite_file(tmp_path):
    assert local_file(str(tmp_path / "ledger.journal")) == tmp_path / "ledger.db"  # the 0.2 default path
    assert local_file(f"sqlite:///{tmp_path}/l.db") == tmp_path / "l.db"
    assert local_file("journal:///r/ledger.journal") == Path("/r/ledger.db")
    assert local_file("postgresql://u@h/db") is None
    with pytest.raises(SenetError, match="unknown scheme"):
        Ledger.open("mysql://u@h/db")
    with pytest.raises(SenetError, match="looks like a URL"):
        Ledger.open("postgresql:/u:pw@h/db")


# -- the journal of senet-ablate 0.2 ---------------------------------------------------------------------------


def old_journal(path: Path) -> dict[str, int]:
    """A 0.2 ledger exactly as it was written: one Optuna study, one Optuna trial per attempt, the ticket and the
    attempt's story in user attributes. Returns the Optuna trial ids by story."""
    storage = JournalStorage(JournalFileBackend(str(path)))
    sid = optuna.create_study(study_name="senet-ablate-ledger", storage=storage)._study_id
    storage.set_study_user_attr(sid, "liveness", {"heartbeat_s": 2.0, "grace_s": 8.0, "claim_grace_s": 8.0})
    storage.set_study_user_attr(sid, "format", 2)
    storage.set_study_user_attr(sid, "study:tiny", {"device": "cpu"})
    owner = asdict(Owner("h", "h/1/2", 99, 5, "tok"))
    stories = {"done": (0, TrialState.COMPLETE, {"outcome": "finished", "run_id": "r0"}),
               "crash": (1, TrialState.FAIL, {"kind": "crash", "reason": "bug", "run_id": "r1"}),
               "running": (2, TrialState.RUNNING, {"run_id": "r2"}),
               "waiting": (3, None, {}),
               "twice": (0, TrialState.COMPLETE, {"outcome": "finished", "run_id": "r4"})}  # fmt: skip
    ids = {}
    for story, (n, state, attrs) in stories.items():
        template = optuna.trial.create_trial(state=TrialState.WAITING, user_attrs=ticket(n).to_attrs())
        ids[story] = tid = storage.create_new_trial(sid, template_trial=template)
        if state is None:
            continue
        storage.set_trial_state_values(tid, TrialState.RUNNING)
        for k, v in {"owner": owner, "beat": 3, "epoch": 1, **attrs}.items():
            storage.set_trial_user_attr(tid, k, v)
        if state == TrialState.COMPLETE:
            storage.set_trial_state_values(tid, state, values=[0.25])
        elif state == TrialState.FAIL:
            storage.set_trial_state_values(tid, state)
    return ids


def test_an_old_journal_is_imported_once_under_its_keys_and_ids(url, opened, tmp_path):
    journal = tmp_path / "ledger.journal"
    ids = old_journal(journal)
    with open(journal, "ab") as f:
        f.write(b'{"op_code": 5, "worker_id": "x", "trial_id": 1, "user_att')  # a torn last record (a full disk)
    if is_local(url):
        ledger = Ledger.open(str(journal), log=lambda s: None)  # the 0.2 default URL: ledger.db beside it
        assert local_file(url) == tmp_path / "ledger.db" and not journal.exists()
        assert (tmp_path / "ledger.journal.imported").exists()  # the backup
    else:
        ledger = opened()
        assert ledger.import_journal(journal) == 5 and journal.exists()
        with pytest.raises(SenetError, match="already holds attempts"):
            ledger.import_journal(journal)
    got = {a.trial_id: a for a in ledger.attempts()}
    assert sorted(got) == sorted(ids.values())  # MLflow's senet.attempt_id tags still find their attempts
    done, crash, was_running = got[ids["done"]], got[ids["crash"]], got[ids["running"]]
    assert (done.state, done.value, done.outcome, done.run_id, done.ticket) == (State.COMPLETE, 0.25, "finished",
                                                                                "r0", ticket(0))  # fmt: skip
    assert done.owner == Owner("h", "h/1/2", 99, 5, "tok") and done.beat == 3 and done.epoch == 1
    assert (crash.state, crash.kind, crash.reason) == (State.FAIL, "crash", "bug")
    assert (was_running.state, was_running.kind) == (State.FAIL, "lost")
    assert was_running.reason == "imported from the journal while running"
    assert got[ids["waiting"]].state == State.WAITING
    twice = got[ids["twice"]]  # the old bug's second result of one trial, attempt number 1 again
    assert (twice.state, twice.kind, twice.ticket.number) == (State.FAIL, "lost", 2)
    assert ledger.note("tiny") == {"device": "cpu"}
    assert ledger.liveness == (Liveness(2.0, 8.0, 8.0) if is_local(url) else FAST)  # a new ledger takes the journal's
    assert ledger.enqueue(ticket(4)) > max(ids.values())  # new ids start after the imported ones
    a = ledger.claim({ticket(3).key}, Owner.me())
    assert a.trial_id == ids["waiting"]
    if is_local(url):
        again = Ledger.open(str(journal))
        assert len(again.attempts()) == 6  # imported once
        again.close()
    ledger.close()


def test_a_damaged_journal_or_one_of_senet_ablate_0_1_is_refused(tmp_path):
    journal = tmp_path / "ledger.journal"
    old_journal(journal)
    lines = journal.read_bytes().split(b"\n")
    lines[1] = b"{damaged"
    journal.write_bytes(b"\n".join(lines))
    with pytest.raises(SenetError, match="record 2 is damaged"):
        Ledger.open(str(journal))
    assert journal.exists()
    older = tmp_path / "old" / "ledger.journal"
    older.parent.mkdir()
    storage = JournalStorage(JournalFileBackend(str(older)))
    optuna.create_study(study_name="demo", storage=storage).enqueue_trial({}, user_attrs={"key": "0123456789ab-s0"})
    with pytest.raises(SenetError, match="ledger of senet-ablate 0.1"):
        Ledger.open(str(older))


# -- what callers build on -------------------------------------------------------------------------------------


def test_retries_copy_the_last_ticket_and_an_oom_retry_runs_alone(opened):
    ledger = opened()
    a = running(ledger)
    ledger.fail(a, "oom", "CUDA out of memory")
    again = next_ticket(ticket(0), ledger.attempts(), max_retries=1)
    assert again.number == 2 and again.exclusive and again.config == ticket(0).config
    ledger.enqueue(again)
    b = ledger.claim({ticket(0).key}, Owner.me())
    ledger.fail(b, "crash", "bug")
    assert next_ticket(ticket(0), ledger.attempts(), max_retries=1) is None  # two counted failures > 1 retry


def test_owner_identity_tells_namespaces_apart():
    assert host_id().startswith(platform.node())
    assert Owner.me().is_local() and os.getpid() == Owner.me().pid


def test_optunas_tools_pointed_at_the_ledger_find_no_study_and_the_ledger_keeps_working(tmp_path):
    """README: the ledger is not an Optuna study. Optuna's storage (what optuna-dashboard opens) adds its empty tables
    to the file and lists nothing; the ledger ignores them and keeps its attempts."""
    import optuna

    url = str(tmp_path / "ledger.db")
    ledger = Ledger.open(url)
    ledger.enqueue(ticket(1))
    ledger.close()
    storage = optuna.storages.RDBStorage(f"sqlite:///{url}")
    assert storage.get_all_studies() == []
    storage.engine.dispose()
    again = Ledger.open(url)
    assert [a.key for a in again.attempts()] == [ticket(1).key]
    again.close()

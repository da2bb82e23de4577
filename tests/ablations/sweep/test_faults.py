"""Fault injection: a sweep loses nothing, duplicates nothing and hangs on nothing, whatever is killed, paused, cut
off or filled up.

Each ledger backend (a SQLite file, and PostgreSQL when it can be started) gets seeded rounds. Every round sweeps a
study of 4 trials, two of them carried over from the last round (maybe half-trained) and two new ones, and starts
a sweep (sometimes a joining worker on a second "host" that shares our hostname), then injects one fault:

- kill: SIGKILL or SIGTERM of the controller, a worker, or everything, at a random moment;
- pause: SIGSTOP of a worker for longer than the ledger's grace, then SIGCONT (its lease is taken away);
- orphan: the controller killed with its workers alive, then the same command rerun (it adopts them);
- three controllers: three sweeps of the study started at the same instant (three reconcilers); the first round
  is this one, on an empty results folder and ledger;
- crash-after-complete: workers that die between the ledger's COMPLETE and MLflow's FINISHED;
- twin host: a joiner with another host id but our hostname, killed outright (judged by heartbeat, not pid);
- stalled observer: the controller (a reconciler) SIGSTOPped past the grace while its workers beat: resumed, it
  must end no healthy lease;
- SQLite: a full disk mid-append (the ledger lives on a small tmpfs, filled up for seconds, then freed), and a
  paused lock holder (the database's write lock held past the grace while the workers beat: no healthy lease may
  be ended);
- PostgreSQL: a restart mid-claim, and every session of the ledger's database killed mid-pass
  (`pg_terminate_backend`), several times in a row.

Then, as a rerun would, it reconciles and repairs, and checks: no trial trained to a result twice, none lost,
nothing left RUNNING, no trial failed for a harness reason, every COMPLETE trial with exactly one FINISHED run,
every checkpoint loadable. A last sweep of every round's trials then finishes everything exactly once. The counts
are printed (`fault injection {...}`) for the record, per backend, also by the dedicated cases below, where the
moment of the fault matters: a lost COMMIT reply (injected at the driver) during enqueue, claim, heartbeats and
complete; concurrent end-of-sweep repairs of a trial with no run; a full disk under acknowledged writes; the
database stopped for longer than the retry window; a paused worker; a torn checkpoint; a full disk for checkpoints.
"""

import contextlib
import errno
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import pytest
import sqlalchemy as sa
from mlflow.entities import ViewType

from ablations.cli import main
from ablations.outcomes import Ending
from ablations.study.load import load_spec
from ablations.study.trials import expand
from ablations.sweep.ledger import Attempt, Ledger, Owner, State, Ticket, pid_alive
from ablations.sweep.manifest import EXIT_DONE, Manifest
from ablations.sweep.reconcile import Reconciler
from ablations.sweep.repair import end_runs, repair
from ablations.sweep.slots import Slot
from ablations.sweep.status import ticket_of
from ablations.sweep.worker import Worker
from ablations.tracking import Tag, Tracker
from ablations.training import engine as train_mod
from ablations.training.checkpoint import load_checkpoint
from ablations.training.engine import RunResult
from tests._support.configs import write_spec
from tests._support.ledgers import ledger_url
from tests._support.processes import ENV, cli, wait_for
from tests._support.stores import local_ledger, tracker

pytestmark = [pytest.mark.slow, pytest.mark.faults]
ROUNDS = 12
SEED = 20261122
STORAGES = ["sqlite", "postgres"]
TORN = b"torn"
FAST = {"SENET_ABLATE_HEARTBEAT_S": "0.5"}
GRACE_S = 2.0  # the grace of a ledger created with FAST: 4 heartbeats
COMMON = ["kill", "kill", "kill", "pause", "orphan", "three_controllers", "crash_after_complete", "twin", "observer"]
# A process paused inside SQLite's write transaction is a dedicated test below (one pause, one observer): as a random
# round beside kills and restarts it could still end a healthy lease once in a while, so it is not one.
KINDS = {"sqlite": [*COMMON, "disk_full"], "postgres": [*COMMON, "restart", "terminate"]}
DISK = "16m"  # the SQLite ledger's tmpfs: room for its WAL (about 4 MB between checkpoints) until filled on purpose


@pytest.fixture(autouse=True)
def _fast_ledgers(monkeypatch):
    """Whoever creates a ledger (a sweep, or this test reading one first) gives it the fast heartbeat."""
    monkeypatch.setenv("SENET_ABLATE_HEARTBEAT_S", FAST["SENET_ABLATE_HEARTBEAT_S"])


# -- processes -------------------------------------------------------------------------------------------------


def _pids_with(text: str) -> list[int]:
    """Live processes whose command line mentions `text` (our results folder): the round's survivors."""
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if text.encode() in (proc / "cmdline").read_bytes():
                    out.append(int(proc.name))
            except OSError:
                continue
    return out


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _launch(*args: str, cwd: Path, env: dict[str, str] | None = None, log: Path | None = None) -> subprocess.Popen:
    """`senet-ablate ARGS` in the background; its stderr goes to `log` (to show when it dies unasked)."""
    err = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115 (the child holds it)
    try:
        return subprocess.Popen([sys.executable, "-m", "ablations.cli", *args], cwd=cwd, stdout=subprocess.DEVNULL,
                                stderr=err, env={**ENV, **FAST, **(env or {})})  # fmt: skip
    finally:
        if log is not None:
            err.close()


def _workers(results: Path, exclude: set[int]) -> list[int]:
    return [p for p in _pids_with(str(results)) if p not in exclude and b"sweep.worker" in _cmd(p)]


def _cmd(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _env_has(pid: int, needle: bytes) -> bool:
    try:
        return needle in Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False


# -- stores ----------------------------------------------------------------------------------------------------


def _attempts(storage: str):
    ledger = Ledger.open(storage)
    try:
        return ledger.attempts()
    finally:
        ledger.close()


@contextlib.contextmanager
def _small_disk(path: Path, size: str = DISK):
    """A tmpfs of `size` mounted at `path`, unmounted after; (None, why) where mounting is refused (not root)."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                             text=True, timeout=30)  # fmt: skip
    except (OSError, subprocess.SubprocessError) as err:
        out = subprocess.CompletedProcess([], 1, "", str(err))
    if out.returncode != 0:
        yield None, f"cannot mount a small tmpfs for a full disk ({(out.stderr or out.stdout).strip()[:200]})"
        return
    try:
        yield path, ""
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def _fill(disk: Path) -> Path:
    """Take every free block of `disk`; returns the file holding them (unlink it to free the disk)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (1 << 20, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as err:
                if err.errno != errno.ENOSPC:
                    raise
    finally:
        os.close(fd)
    return filler


@contextlib.contextmanager
def _write_lock(path: str):
    """SQLite's write lock, held as a process paused mid-transaction would hold it."""
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield
        conn.execute("ROLLBACK")
    finally:
        conn.close()


def _healthy(storage: str) -> set[int]:
    """The attempts whose worker is alive and not paused: leases being renewed."""
    return {a.trial_id for a in _attempts(storage)
            if a.state == State.RUNNING and a.owner is not None and pid_alive(a.owner.pid, a.owner.start)}  # fmt: skip


def _assert_kept(storage: str, healthy: set[int], fault: str) -> None:
    ended = [(a.trial_id, a.reason) for a in _attempts(storage) if a.trial_id in healthy and a.kind == Ending.LOST]
    assert not ended, f"{fault}: the lease of a healthy, beating worker was ended: {ended}"


# -- the promises ----------------------------------------------------------------------------------------------


def invariants(spec_path: Path, storage: str, uri: str, results: Path, planted: set[Path] = frozenset()) -> dict:
    """Reconcile and repair as a rerun does first, then check the promises; returns counts for the record."""
    spec = load_spec(spec_path)
    trials = expand(spec)
    tickets = {t.key: ticket_of(t) for t in trials}
    ledger, tracker_ = Ledger.open(storage), Tracker(uri, results)
    reconciler = Reconciler(ledger, lambda _: None)
    deadline = time.monotonic() + ledger.liveness.grace_s + 15
    while True:  # a dead foreign host's attempt is ended only after the grace, by the database's clock
        found, ended = reconciler.reconcile(tickets, max_retries=1000)
        end_runs(tracker_, ended)
        if not any(a.state == State.RUNNING for a in found) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    repair(
        tracker_, ledger, found, set(tickets), results, spec.name, tracker_.find_parent(spec.name), {}, lambda _: None
    )
    ledger.close()
    found = [a for a in found if a.key in tickets]
    complete = Counter(a.key for a in found if a.state == State.COMPLETE)
    assert all(n == 1 for n in complete.values()), f"duplicated in the ledger: {complete}"
    assert not [a for a in found if a.state == State.RUNNING], "RUNNING attempt without a live worker"
    waiting = {a.key for a in found if a.state == State.WAITING}
    lost = [k for k in tickets if k not in complete and k not in waiting]
    assert not lost, f"lost trials: {lost}"
    harness = [a for a in found if a.state == State.FAIL and not _injected(a)]
    assert not harness, f"failed for a harness reason: {[(a.kind, a.reason) for a in harness]}"
    runs = tracker_.trial_runs(set(tickets))
    assert not [r for r in runs if r.status == "RUNNING"], "RUNNING MLflow run without a live worker"
    finished = Counter(r.key for r in runs if r.status == "FINISHED")
    assert finished == Counter(set(complete)), f"ledger and MLflow disagree: {finished} vs {complete}"
    for ckpt in results.glob("runs/*/checkpoint.pt"):
        if ckpt in planted and ckpt.read_bytes() == TORN:
            continue  # torn on purpose; its next attempt must restart from scratch and say so
        load_checkpoint(ckpt)  # raises if a kill left a torn file
    return {"complete": len(complete), "failed_attempts": sum(a.state == State.FAIL for a in found)}


def _injected(a) -> bool:
    """An attempt ended by a fault we injected: a worker killed (crash: died mid-trial), paused or on a dead host
    (lost), or stopped by our SIGTERM."""
    return (a.kind == "crash" and "died mid-trial" in a.reason) or a.kind in ("lost", "stopped")


def _note(storage: str, case: str, figures: dict) -> None:
    """The record of a case: the promises it kept and its counts (for the closing note)."""
    record = {"storage": storage, "case": case, "duplicates": 0, "lost": 0, "running_left": 0, "harness_failures": 0,
              **figures}  # fmt: skip
    print(f"\nfault injection {record}")


# -- seeded rounds ---------------------------------------------------------------------------------------------


def _schedule(kinds: list[str], rng: random.Random) -> list[str]:
    """Three controllers on the empty folder first, then every kind of the list (kills thrice), the rest drawn."""
    rest = [k for k in kinds if k != "three_controllers"]
    rest += [rng.choice(kinds) for _ in range(ROUNDS - 1 - len(rest))]
    rng.shuffle(rest)
    return ["three_controllers", *rest]


def _round_spec(tmp_path: Path, backend: str, seeds: list[int]) -> Path:
    return write_spec(tmp_path, name=f"faults_{backend}", seeds=seeds, train={"epochs": 3},
                      data={"synthetic_train": 480})  # fmt: skip


def _training(storage: str) -> bool:
    return any(a.state == State.RUNNING for a in _attempts(storage))


@pytest.mark.parametrize("backend", STORAGES)
def test_random_faults_lose_nothing_duplicate_nothing_and_hang_on_nothing(backend, tmp_path, request):
    with contextlib.ExitStack() as stack:
        pg, disk, why = None, None, ""
        results = tmp_path / "results"
        if backend == "postgres":
            pg = request.getfixturevalue("pg")
            storage = pg.createdb(f"faults{random.randrange(10**9)}")
        else:
            disk, why = stack.enter_context(_small_disk(tmp_path / "ledger-disk"))
            storage = str(disk / "ledger.db") if disk is not None else local_ledger(results)
        kinds = [k for k in KINDS[backend] if k != "disk_full" or disk is not None]
        if why:
            print(f"\nfull disk rounds left out: {why}")
        _rounds(backend, storage, pg, disk, kinds, tmp_path)


def _rounds(backend: str, storage: str, pg, disk: Path | None, kinds: list[str], tmp_path: Path) -> None:
    results, logs = tmp_path / "results", tmp_path / "logs"
    logs.mkdir()
    uri = f"sqlite:///{results / 'mlflow.db'}"
    rng = random.Random(SEED)
    common = ["--results", str(results), "--storage", storage, "--no-progress", "--max-retries", "1000"]
    tally: Counter[str] = Counter()
    planted: set[Path] = set()
    for n, fault in enumerate(_schedule(kinds, rng)):
        spec = _round_spec(tmp_path, backend, [n, n + 1])  # seed n carried over from the last round, n + 1 new
        tally[fault] += 1
        env = {"SENET_ABLATE_FAILPOINT": "after_complete"} if fault == "crash_after_complete" else {}
        controllers = 3 if fault == "three_controllers" else 1
        err = [logs / f"{n}-sweep{i}.err" for i in range(controllers)]
        procs = [_launch("sweep", str(spec), "--workers", "1" if i else "2", *common, cwd=tmp_path, env=env,
                         log=err[i]) for i in range(controllers)]  # fmt: skip
        if fault == "twin" or rng.random() < 0.2:
            with contextlib.suppress(AssertionError):  # a joiner joins a sweep whose trials are in the ledger
                wait_for(lambda: _attempts(storage), timeout=15, every=0.3)
            procs.append(_launch("worker", str(spec), *common, cwd=tmp_path, env={"SENET_ABLATE_HOST_ID": "twin"}))
        if fault in ("kill", "orphan"):
            time.sleep(rng.uniform(2.0, 12.0))  # any moment: start-up, queueing, claims, training, the end
        elif fault == "three_controllers":  # they race to the end, and each says it finished
            for i, p in enumerate(procs[:controllers]):
                assert p.wait(timeout=240) == 0, (
                    f"round {n}: sweep {i} of 3 exited {p.returncode}: {err[i].read_text()}"
                )
        else:  # the fault must meet leases being renewed
            assert wait_for(lambda: _training(storage), timeout=90, every=0.2), f"round {n}: nothing trains"
            time.sleep(rng.uniform(0.0, 1.0) if fault != "crash_after_complete" else rng.uniform(3.0, 6.0))
        for i, p in enumerate(procs[:controllers]):  # none may have given up by itself
            assert p.poll() in (None, 0), f"round {n} ({fault}): sweep {i} exited {p.returncode}: {err[i].read_text()}"
        _inject(fault, procs, results, storage, pg, disk, rng, tally, tmp_path, spec, common)
        for pid in _pids_with(str(results)):  # end the round: nothing of it may survive into the check
            _signal(pid, signal.SIGCONT)
            _signal(pid, signal.SIGKILL)
        for p in procs:
            p.wait()
        time.sleep(0.2)
        done = {a.key for a in _attempts(storage) if a.state == State.COMPLETE}
        ckpts = sorted(c for c in results.glob("runs/*/checkpoint.pt") if c.parent.name not in done)
        if ckpts and rng.random() < 0.25:
            victim_ckpt = rng.choice(ckpts)
            victim_ckpt.write_bytes(TORN)
            planted.add(victim_ckpt)
            tally["torn_checkpoints"] += 1
        invariants(spec, storage, uri, results, planted)
    spec = _round_spec(tmp_path, backend, list(range(ROUNDS + 1)))  # every round's trials
    final = subprocess.run([sys.executable, "-m", "ablations.cli", "sweep", str(spec), "--workers", "2", *common],
                           cwd=tmp_path, env={**ENV, **FAST}, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert final.returncode == 0, final.stderr
    record = invariants(spec, storage, uri, results)
    assert record["complete"] == 2 * (ROUNDS + 1)
    logs_text = "".join(p.read_text() for p in results.glob("runs/*/train.log"))
    if tally["torn_checkpoints"]:  # a torn checkpoint of an unfinished trial is read by its next attempt
        assert "restarting from scratch" in logs_text
    figures = {"storage": backend, "rounds": ROUNDS, "trials": record["complete"], "duplicates": 0, "lost": 0,
               "running_left": 0, "harness_failures": 0, **dict(tally), **record}  # fmt: skip
    (tmp_path.parent / f"faults-{backend}.json").write_text(json.dumps(figures))
    print(f"\nfault injection {figures}")


def _inject(fault, procs, results, storage, pg, disk, rng, tally, tmp_path, spec, common) -> None:
    """One round's fault, into the running sweep `procs` (the controller first)."""
    ours = {p.pid for p in procs}
    workers = _workers(results, ours)
    if fault == "kill":
        sig = signal.SIGKILL if rng.random() < 0.75 else signal.SIGTERM
        victim = rng.choice(["controller", "worker", "everything"])
        targets = {"controller": [procs[0].pid], "worker": workers[:1] or [procs[0].pid],
                   "everything": [*ours, *workers]}[victim]  # fmt: skip
        for pid in targets:
            _signal(pid, sig)
        tally["kills"] += len(targets)
        time.sleep(rng.uniform(0.0, 1.5))
    elif fault == "pause" and workers:
        victim = rng.choice(workers)
        _signal(victim, signal.SIGSTOP)
        time.sleep(2.5 * GRACE_S)  # its attempt is taken away and queued again
        _signal(victim, signal.SIGCONT)  # it finds out at its next heartbeat or checkpoint and stops quietly
        time.sleep(rng.uniform(1.0, 3.0))
    elif fault == "orphan":
        _signal(procs[0].pid, signal.SIGKILL)
        procs[0].wait()
        procs.append(_launch("sweep", str(spec), "--workers", "2", *common, cwd=tmp_path))
        time.sleep(rng.uniform(3.0, 8.0))
    elif fault == "twin":
        twins = [p.pid for p in procs if b"worker" in _cmd(p.pid)]
        for pid in [*twins, *(w for w in workers if _env_has(w, b"SENET_ABLATE_HOST_ID=twin"))]:
            _signal(pid, signal.SIGKILL)  # the other "host" dies without a word
        time.sleep(rng.uniform(0.5, 2.0))
    elif fault == "observer":
        healthy = _healthy(storage)
        _signal(procs[0].pid, signal.SIGSTOP)  # the controller stalls, mid-pass or between passes
        time.sleep(2.5 * GRACE_S)
        _signal(procs[0].pid, signal.SIGCONT)
        time.sleep(2.0)  # its next passes, after what it saw before it stalled
        _assert_kept(storage, healthy, fault)
        tally["healthy_leases_kept"] += len(healthy)
    elif fault == "lock_hold":
        healthy = _healthy(storage)
        with _write_lock(storage):  # every heartbeat waits: by the database's clock none arrives
            time.sleep(3 * GRACE_S)
        time.sleep(2.0)
        _assert_kept(storage, healthy, fault)
        tally["healthy_leases_kept"] += len(healthy)
    elif fault == "disk_full":
        filler = _fill(disk)  # mid-append: beats, claims and results find no room for the WAL to grow
        time.sleep(rng.uniform(2.0, 4.0))
        filler.unlink()
        time.sleep(rng.uniform(0.5, 2.0))
    elif fault == "restart":
        pg.restart()  # mid-claim, mid-heartbeat, mid-result
        time.sleep(rng.uniform(1.0, 3.0))
    elif fault == "terminate":
        for _ in range(rng.randint(3, 6)):  # every session of the ledger's database, mid-pass
            tally["sessions_killed"] += pg.terminate(sa.make_url(storage).database)
            time.sleep(rng.uniform(0.2, 1.0))


# -- a lost COMMIT reply ---------------------------------------------------------------------------------------


def _lose_commit_replies(ledger: Ledger) -> list[str]:
    """From now on, every transaction's first COMMIT goes through and its reply is lost: the driver raises a
    connection error after the database committed (PostgreSQL: the connection is closed under it, as a reset
    between COMMIT and its answer would; SQLite: an I/O error after the commit). The retry's reply arrives.

    Returns the statements of each transaction whose reply was lost, as they are lost.
    """
    engine, local, lost = ledger.engine, threading.local(), []
    real = engine.dialect.do_commit

    @sa.event.listens_for(engine, "before_cursor_execute")
    def _seen(conn, cursor, statement, *_):
        local.__dict__.setdefault("statements", []).append(statement)

    def do_commit(dbapi_connection) -> None:
        real(dbapi_connection)
        statements, local.statements = getattr(local, "statements", []), []
        if getattr(local, "retry", False):  # each thread's transactions alternate: first try lost, retry answered
            local.retry = False
            return
        local.retry = True
        lost.append(" ; ".join(statements))
        if engine.dialect.name == "sqlite":
            raise sqlite3.OperationalError("disk I/O error")
        import psycopg

        dbapi_connection.driver_connection.close()
        raise psycopg.OperationalError("consuming input failed: server closed the connection unexpectedly")

    engine.dialect.do_commit = do_commit
    return lost


def _ledger_url(backend: str, tmp_path: Path, request) -> str:
    return ledger_url({"postgres": "postgresql"}.get(backend, backend), tmp_path, request)


@pytest.mark.parametrize("backend", STORAGES)
def test_lost_commit_replies_duplicate_nothing(backend, tmp_path, request):
    """Item 2: a reset between COMMIT and its reply made the retried enqueue queue a trial twice, and a lost reply of
    complete made the worker end its own COMPLETE run KILLED. Here a worker and its reconciler lose the first reply
    of every transaction (enqueue, claim, heartbeats, progress, run id, complete, the end-of-sweep look)."""
    results = tmp_path / "results"
    storage = _ledger_url(backend, tmp_path, request)
    spec_path = write_spec(tmp_path, name=f"lostreply_{backend}", grid={"se.excitation": ["sigmoid"]}, seeds=1)
    spec = load_spec(spec_path)
    tickets = {t.key: ticket_of(t) for t in expand(spec)}
    uri = f"sqlite:///{results / 'mlflow.db'}"
    worker = Worker(Manifest(spec.name, None, tickets, max_retries=0), results, Slot(0), storage, uri)
    lost = _lose_commit_replies(worker.ledger)
    worker.reconciler.reconcile(tickets, max_retries=0)
    assert worker.run() == EXIT_DONE
    story = sorted((a.key, a.ticket.number, a.state, a.outcome) for a in _attempts(storage))
    assert story == sorted((k, 1, State.COMPLETE, Ending.FINISHED) for k in tickets)  # one attempt each, no retry
    for what, needle in [("enqueue", "INSERT INTO senet_attempts"), ("claim", "claimed_at="), ("complete", "outcome=")]:
        assert any(needle in s for s in lost), f"no {what} lost its reply"
    runs = tracker(results).trial_runs()
    assert sorted((r.key, r.status) for r in runs) == sorted((k, "FINISHED") for k in tickets)
    assert not [r.tags[Tag.ENDED_BY] for r in runs if Tag.ENDED_BY in r.tags]  # none was ended as superseded
    _note(backend, "lost_commit_reply", {"lost_replies": len(lost), **invariants(spec_path, storage, uri, results)})


# -- concurrent repairs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", STORAGES)
def test_concurrent_end_of_sweep_repairs_make_one_finished_run(backend, tmp_path, request):
    """Item 3: two sweeps ending together both repaired a COMPLETE trial that had no run (its worker found MLflow
    down): two FINISHED runs for one trial. Both repairs look before either makes a run; one run is left."""
    results = tmp_path / "results"
    storage = _ledger_url(backend, tmp_path, request)
    spec_path = write_spec(tmp_path, name=f"repairs_{backend}", grid={"se.excitation": ["sigmoid"]}, seeds=1)
    spec = load_spec(spec_path)
    [trial] = expand(spec)
    ledger = Ledger.open(storage)
    ledger.enqueue(ticket_of(trial))
    attempt = ledger.claim({trial.key}, Owner.me())
    history = [
        {"epoch": 1.0, "train_loss": 1.1, "val_top1_err": 0.6},
        {"epoch": 2.0, "train_loss": 0.9, "val_top1_err": 0.5},
    ]
    result = RunResult("finished", history, {"final_val_top1_err": 0.5, "best_val_top1_err": 0.5})
    ledger.complete(attempt, 0.5, Ending.FINISHED, result=asdict(result))
    uri = f"sqlite:///{results / 'mlflow.db'}"
    parent = Tracker(uri, results).make_parent(spec.name, spec.description, {})
    together, changed, errors = threading.Barrier(2), [], []

    def sweep_ends() -> None:
        mine, theirs = Tracker(uri, results), Ledger.open(storage)
        look = mine.trial_runs

        def trial_runs(*args, **kw):
            runs = look(*args, **kw)
            together.wait(timeout=60)  # both have looked: neither has made a run yet
            return runs

        mine.trial_runs = trial_runs
        try:
            changed.append(repair(mine, theirs, theirs.attempts(), {trial.key}, results, spec.name, parent, {},
                                  lambda _: None))  # fmt: skip
        except BaseException as err:
            errors.append(err)
        finally:
            theirs.close()

    threads = [threading.Thread(target=sweep_ends) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    client = tracker(results).client
    query = f"tags.`{Tag.KEY}` = '{trial.key}'"
    runs = client.search_runs([tracker(results).experiment(spec.name)], query, run_view_type=ViewType.ALL)
    live = [r for r in runs if r.info.lifecycle_stage == "active"]
    assert [(r.info.status, r.data.tags.get(Tag.OUTCOME)) for r in live] == [("FINISHED", "finished")]
    assert len(runs) == 2 and sorted(changed) == [0, 1]  # both made one; the one not recorded was deleted
    assert ledger.attempt(attempt.trial_id).run_id == live[0].info.run_id
    assert sorted(client.get_metric_history(live[0].info.run_id, "val/top1_err"), key=lambda m: m.step)[-1].value == 0.5
    ledger.close()
    _note(backend, "concurrent_repairs", {"repairs": 2, **invariants(spec_path, storage, uri, results)})


# -- a full disk -----------------------------------------------------------------------------------------------


def _ticket(n: int) -> Ticket:
    return Ticket(key=f"{n:012x}-s0", config={"train": {"epochs": 1}}, config_hash=f"{n:012x}", seed=0,
                  label=f"t{n}", factors={}, studies=["disk"])  # fmt: skip


def _leases(url: str, n: int) -> tuple[list[Ledger], list[Attempt]]:
    """`n` connections to the ledger at `url` (as `n` processes would), each holding the lease of a trial of its own."""
    ledgers = [Ledger.open(url) for _ in range(n)]
    held = []
    for i, ledger in enumerate(ledgers):
        ledger.enqueue(_ticket(i))
        held.append(ledger.claim({_ticket(i).key}, Owner.me()))
    return ledgers, held


def test_a_full_disk_mid_append_loses_no_acknowledged_write(tmp_path):
    """Item 4: a full disk tore a journal record, the next process's append was glued onto it, the ledger no longer
    opened and an acknowledged heartbeat was never applied. SQLite on a small tmpfs, filled up while three
    connections (as three processes would) beat their leases as fast as they can, then freed."""
    with _small_disk(tmp_path / "disk") as (disk, why):
        if disk is None:
            pytest.skip(why)
        url = str(disk / "ledger.db")
        ledgers, held = _leases(url, 3)
        acked, stop = [0] * len(ledgers), threading.Event()

        def beat(i: int) -> None:
            while not stop.is_set():
                ledgers[i].heartbeat(held[i])
                acked[i] += 1  # the ledger said yes

        threads = [threading.Thread(target=beat, args=(i,)) for i in range(len(ledgers))]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: sum(acked) >= 30, timeout=30, every=0.05)
            filler = _fill(disk)
            before = sum(acked)
            time.sleep(2.0)
            during = sum(acked) - before
            filler.unlink()
            wait_for(lambda: sum(acked) >= before + during + 30, timeout=60, every=0.05)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=120)
        assert during <= len(ledgers)  # the disk was full mid-append: no write got through (one in flight each)
        assert [ledger.attempt(a.trial_id).beat for ledger, a in zip(ledgers, held, strict=True)] == [
            1 + n for n in acked
        ]
        with contextlib.closing(sqlite3.connect(url)) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        for ledger in ledgers:
            ledger.close()
        assert len(_attempts(url)) == len(ledgers)  # it opens, whole
    _note("sqlite", "full_disk_acknowledged_writes", {"acknowledged": sum(acked), "while_full": during})


# -- a paused lock holder -------------------------------------------------------------------------------------


def test_a_paused_lock_holder_gets_no_healthy_lease_ended(tmp_path):
    """Item 6 on SQLite: the write lock held past the grace (by a process paused mid-transaction) got healthy,
    beating workers declared lost: none of their beats could land, so by the database's clock they looked dead to
    the first observer in after the lock was freed, even once another's beat had landed. Observers look every 0.3 s:
    one throughout (a controller), three from moments before the lock is freed (workers going idle)."""
    url = str(tmp_path / "ledger.db")
    holders, held = _leases(url, 2)
    period, stop, ended = holders[0].liveness.heartbeat_s, threading.Event(), []

    def beat(i: int) -> None:
        while not stop.wait(period):
            holders[i].heartbeat(held[i])

    def observe(ledger: Ledger, first: float) -> None:
        if not stop.wait(first):
            while True:
                ended.extend(ledger.expire())
                if stop.wait(0.3):
                    return

    firsts = [0.0, 3 * GRACE_S - 0.3, 3 * GRACE_S - 0.2, 3 * GRACE_S - 0.1]  # when each observer first looks
    observers = [Ledger.open(url) for _ in firsts]
    threads = [threading.Thread(target=beat, args=(i,)) for i in range(len(holders))]
    threads += [threading.Thread(target=observe, args=(o, first)) for o, first in zip(observers, firsts, strict=True)]
    for t in threads:
        t.start()
    try:
        with _write_lock(url):
            time.sleep(3 * GRACE_S)  # no beat lands; the observers wait for the lock, three of them a moment only
        time.sleep(3 * period)  # the queued beats land; the observers look again
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert [(e.trial_id, e.reason) for e in ended] == []
    assert [observers[0].attempt(a.trial_id).state for a in held] == [State.RUNNING] * len(held)
    time.sleep(GRACE_S + 0.5)  # their workers really stop beating now: they are found dead as before
    assert sorted(e.trial_id for e in observers[0].expire()) == [a.trial_id for a in held]
    for ledger in (*holders, *observers):
        ledger.close()
    _note("sqlite", "paused_lock_holder", {"held_s": 3 * GRACE_S, "healthy_leases_kept": len(held)})


# -- a database stopped for longer than the retry window -------------------------------------------------------


def test_a_database_stopped_past_the_retry_window_stops_with_one_line_and_resumes(pg, tmp_path):
    """Item 5: an outage a little longer than SENET_ABLATE_DB_RETRY_S raised the user-error type, which the worker
    classed `config`: the trial was failed for good. Now the sweep stops with one line and a rerun finishes it."""
    url = pg.createdb(f"down{random.randrange(10**9)}")
    spec = write_spec(tmp_path, name="dbdown", grid={"se.excitation": ["sigmoid"]}, train={"epochs": 4},
                      data={"synthetic_train": 640})  # fmt: skip
    results = tmp_path / "results"
    common = ["--results", str(results), "--storage", url, "--no-progress"]
    proc = cli("sweep", str(spec), "--workers", "2", *common, cwd=tmp_path,
               env={**FAST, "SENET_ABLATE_DB_RETRY_S": "3"})  # fmt: skip
    wait_for(lambda: [a for a in _attempts(url) if a.state == State.RUNNING and a.epoch >= 1], timeout=180)
    pg.stop()
    try:
        out, err = proc.communicate(timeout=120)
        wait_for(lambda: not _pids_with(str(results)), timeout=120)  # its workers give up too, on their own
    finally:
        pg.start()
    banner, where, *lines = err.strip().splitlines()  # the sweep's opening lines, then what stopped it
    assert banner.startswith("sweep dbdown: 2 trials") and where.startswith("  results "), err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("senet-ablate: error: --storage: ") and "unreachable for 3 s" in lines[0]
    assert lines[0].endswith("rerun the same command to resume") and pg.password not in err
    assert proc.returncode == 75  # EX_TEMPFAIL: try again later
    assert not [a for a in _attempts(url) if a.kind == Ending.CONFIG]
    again = subprocess.run([sys.executable, "-m", "ablations.cli", "sweep", str(spec), *common], cwd=tmp_path,
                           env={**ENV, **FAST}, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stderr
    record = invariants(spec, url, f"sqlite:///{results / 'mlflow.db'}", results)
    assert record["complete"] == 2
    _note("postgres", "database_stopped_past_retry_window", {"retry_s": 3, **record})


# -- processes paused, checkpoints torn, disks full ------------------------------------------------------------


def test_a_paused_worker_loses_its_lease_and_stops_quietly_when_resumed(tmp_path):
    """SIGSTOP past the grace, then SIGCONT: the trial is trained once to a result, by the worker that took it
    over; the paused one finds its lease gone, writes nothing more and ends its run KILLED as superseded."""
    spec = write_spec(tmp_path, name="pause", grid={"se.excitation": ["sigmoid"]}, seeds=1, train={"epochs": 6},
                      data={"synthetic_train": 800})  # fmt: skip
    results = tmp_path / "results"
    common = ["--results", str(results), "--no-progress", "--max-retries", "0"]
    proc = _launch("sweep", str(spec), "--workers", "2", *common, cwd=tmp_path)
    attempt = wait_for(lambda: [a for a in _attempts(local_ledger(results)) if a.epoch >= 1], 120)[0]
    _signal(attempt.owner.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: len(_attempts(local_ledger(results))) == 2, timeout=60)  # taken away, requeued
    finally:
        _signal(attempt.owner.pid, signal.SIGCONT)
    assert proc.wait(timeout=240) == 0
    ledger = _attempts(local_ledger(results))
    assert [(a.state, a.kind) for a in ledger] == [(State.FAIL, "lost"), (State.COMPLETE, None)]
    runs = {r.tags[Tag.ATTEMPT_ID]: r for r in tracker(results).trial_runs()}
    assert runs[str(ledger[1].trial_id)].status == "FINISHED"
    paused = tracker(results).client.get_run(runs[str(ledger[0].trial_id)].run_id)
    assert paused.info.status == "KILLED" and paused.data.tags["senet.ended_by"].startswith(("lost", "superseded"))
    # The resumed worker noticed and stopped: its last words are in the trial's log, after the new attempt began.
    log = next(results.glob("runs/*/train.log")).read_text()
    wait_for(lambda: "superseded" in next(results.glob("runs/*/train.log")).read_text(), timeout=60)
    assert "resumed after epoch" in log


def test_a_crash_between_the_ledger_and_mlflow_keeps_one_finished_run(tmp_path):
    """An abnormal worker exit used to mark the run KILLED without looking at the ledger, so a COMPLETE trial could
    lose its FINISHED run. The ledger decides; the sweep repairs MLflow from it."""
    spec = write_spec(tmp_path, name="crashafter", seeds=1)
    results = tmp_path / "results"
    proc = _launch("sweep", str(spec), "--results", str(results), "--no-progress", "--max-retries", "0",
                   cwd=tmp_path, env={"SENET_ABLATE_FAILPOINT": "after_complete"})  # fmt: skip
    assert proc.wait(timeout=240) == 0
    ledger = _attempts(local_ledger(results))
    assert [a.state for a in ledger] == [State.COMPLETE] * 2
    runs = tracker(results).trial_runs()
    assert sorted(r.status for r in runs) == ["FINISHED", "FINISHED"] and all(r.outcome for r in runs)


def test_a_torn_checkpoint_restarts_the_trial_from_scratch_and_says_so(tmp_path):
    spec = write_spec(tmp_path, name="torn", grid={"se.excitation": ["sigmoid"]}, seeds=1, train={"epochs": 4},
                      data={"synthetic_train": 640})  # fmt: skip
    results = tmp_path / "results"
    common = ["--results", str(results), "--no-progress"]
    proc = _launch("sweep", str(spec), *common, cwd=tmp_path)
    ckpt = wait_for(lambda: next(results.glob("runs/*/checkpoint.pt"), None))
    wait_for(lambda: load_checkpoint(ckpt)["epoch"] >= 1)
    for pid in _pids_with(str(results)):  # the host goes down mid-trial...
        _signal(pid, signal.SIGKILL)
    proc.wait()
    ckpt.write_bytes(TORN)  # ...and its checkpoint is left torn
    again = subprocess.run([sys.executable, "-m", "ablations.cli", "sweep", str(spec), *common], cwd=tmp_path,
                           env=ENV, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stderr
    log = (ckpt.parent / "train.log").read_text()
    assert "checkpoint is unreadable" in log and "restarting from scratch" in log
    assert load_checkpoint(ckpt)["epoch"] == 4
    uri = f"sqlite:///{results / 'mlflow.db'}"
    assert invariants(spec, local_ledger(results), uri, results)["complete"] == 1


def test_disk_full_mid_trial_fails_clearly_and_resumes_later(tmp_path, monkeypatch):
    spec_path = write_spec(tmp_path, name="diskfull", grid={"se.excitation": ["sigmoid"]}, seeds=1,
                           train={"epochs": 3})  # fmt: skip
    results = tmp_path / "results"
    spec = load_spec(spec_path)
    [trial] = expand(spec)
    ledger = Ledger.open(local_ledger(results))
    ledger.enqueue(ticket_of(trial))
    real, calls = train_mod.save_checkpoint, []

    def full_on_second(state, path):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(state, path)

    monkeypatch.setattr(train_mod, "save_checkpoint", full_on_second)
    manifest = Manifest(spec.name, None, {trial.key: ticket_of(trial)}, max_retries=1)
    worker = Worker(manifest, results, Slot(0), local_ledger(results), f"sqlite:///{results / 'mlflow.db'}")
    attempt = ledger.claim({trial.key}, Owner.me())
    assert worker.run_attempt(attempt) == "crash"
    ended = ledger.attempt(attempt.trial_id)
    assert ended.kind == "crash" and "No space left on device" in ended.reason
    ckpt = next(results.glob("runs/*/checkpoint.pt"))
    assert load_checkpoint(ckpt)["epoch"] == 1  # the epoch-1 checkpoint survived intact
    assert [p.name for p in ckpt.parent.iterdir() if p.name.startswith(".")] == []  # no temp file left
    monkeypatch.setattr(train_mod, "save_checkpoint", real)
    assert main(["sweep", str(spec_path), "--results", str(results), "--no-progress"]) == 0
    assert "resumed after epoch 1" in (ckpt.parent / "train.log").read_text()


# -- bad input, and reading while a sweep runs -----------------------------------------------------------------


def test_unwritable_results_folder_is_one_clear_line(tmp_path, capsys):
    spec = write_spec(tmp_path, name="nowrite")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["sweep", str(spec), "--results", str(blocker / "results"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"senet-ablate: error: --results: {blocker / 'results'} is not a writable folder")
    assert blocker.read_text() == "not a folder"


def test_truncated_spec_is_refused(tmp_path, capsys):
    whole = write_spec(tmp_path, name="cut").read_text()
    cut = tmp_path / "cut_half.yaml"
    cut.write_text(whole[: len(whole) // 2])
    assert main(["sweep", str(cut), "--results", str(tmp_path / "r")]) == 2
    assert str(cut) in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_report_while_a_sweep_runs(tmp_path, capsys):
    spec = write_spec(tmp_path, name="live", train={"epochs": 3}, data={"synthetic_train": 480})
    results, out = tmp_path / "results", tmp_path / "report"
    proc = _launch("sweep", str(spec), "--results", str(results), "--workers", "2", "--no-progress", cwd=tmp_path)
    deadline = time.time() + 300
    reports = 0
    while proc.poll() is None and time.time() < deadline:
        if (results / "mlflow.db").exists() and (results / "ledger.db").exists():
            assert main(["report", str(spec), "--results", str(results), "--out", str(out)]) == 0, capsys.readouterr()
            assert "SE ablation report" in (out / "README.md").read_text()
            reports += 1
        time.sleep(1)
    assert proc.wait(timeout=10) == 0
    assert reports >= 2  # at least two reports were written while trials were still running
    assert main(["report", str(spec), "--results", str(results), "--out", str(out)]) == 0
    assert "4 finished" in (out / "README.md").read_text()

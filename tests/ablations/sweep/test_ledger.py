"""Ledger bookkeeping: atomic claims and the liveness rules that decide which RUNNING trials are dead."""

import os
import subprocess
import sys
import time

from optuna.trial import TrialState

from ablations.sweep.ledger import CLAIM_GRACE_S, Entry, Ledger, _process_start, host_name, is_alive, open_storage


def entry(attrs, started=None):
    return Entry(1, "s", "k-s0", TrialState.RUNNING, attrs, started)


def me(**changes):
    return {"owner": {"host": host_name(), "pid": os.getpid(), "start": _process_start(os.getpid()), **changes}}


def test_owner_on_this_host_is_judged_by_its_process():
    assert is_alive(entry(me()), rdb_heartbeat=False)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    assert not is_alive(entry(me(pid=int(dead.stdout))), rdb_heartbeat=True)
    assert not is_alive(entry(me(start=1)), rdb_heartbeat=True)  # the pid now belongs to another process


def test_owner_elsewhere_is_judged_by_its_heartbeat():
    other = {"owner": {"host": "elsewhere", "pid": 1, "start": 1}}
    assert is_alive(entry(other), rdb_heartbeat=True)  # Optuna's heartbeat decides (fail_stale_trials)
    assert is_alive(entry({**other, "heartbeat": time.time()}), rdb_heartbeat=False)
    assert not is_alive(entry({**other, "heartbeat": time.time() - 3600}), rdb_heartbeat=False)


def test_a_claim_without_owner_is_alive_only_during_the_grace():
    assert is_alive(entry({}, started=time.time()), rdb_heartbeat=True)
    assert not is_alive(entry({}, started=time.time() - CLAIM_GRACE_S - 1), rdb_heartbeat=True)


def test_claims_are_exclusive_and_name_their_owner(tmp_path):
    ledger = Ledger(open_storage(str(tmp_path / "ledger.journal")))
    ledger.enqueue("s", {"key": "a-s0"})
    first, second = ledger.claim("s"), ledger.claim("s")
    assert first is not None and first.key == "a-s0" and second is None
    (e,) = ledger.entries("s")
    assert e.state == TrialState.RUNNING and e.attrs["owner"]["pid"] == os.getpid() and is_alive(e, False)

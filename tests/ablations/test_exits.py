"""A process that ends at once (`exit_now`) still says everything it printed and closes what registered."""

import subprocess
import sys

from ablations.sweep.ledger import Ledger
from tests._support.processes import ENV


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120)


def test_exit_now_runs_the_closers_flushes_and_keeps_the_code():
    done = _python(
        "import sys; from ablations.exits import at_exit, exit_now; "
        "at_exit(lambda: print('first registered, closed last')); at_exit(lambda: 1 / 0); "
        "at_exit(lambda: print('closed first')); print('said', end=''); print('warned', file=sys.stderr, end=''); "
        "exit_now(3)"
    )
    assert done.returncode == 3
    assert done.stdout == "saidclosed first\nfirst registered, closed last\n" and done.stderr == "warned"


def test_a_process_ending_at_once_leaves_its_sqlite_ledger_whole(tmp_path):
    """Without closing, the write-ahead log stayed beside the file, and a reader of a read-only folder (which reads
    the file as it is) missed what was in it."""
    url = str(tmp_path / "ledger.db")
    done = _python(
        "from ablations.exits import exit_now; from ablations.sweep.ledger import Ledger; "
        f"Ledger.open({url!r}).set_note('tiny', {{'overrides': {{'a': 1}}}}); exit_now(0)"
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger.db"]
    assert Ledger.open(url).note("tiny") == {"overrides": {"a": 1}}

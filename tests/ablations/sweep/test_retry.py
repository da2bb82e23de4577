"""What a sweep records for reading it back, and trials a user can retry (issue 19: the new-user cases)."""

import pytest

from ablations.cli import main
from ablations.config import IDENTITY_VERSION
from ablations.outcomes import Ending
from ablations.study.load import load_spec
from ablations.study.trials import expand
from ablations.sweep.ledger import Ledger, Owner
from ablations.sweep.start import requeue_config_failures
from ablations.sweep.status import LOSS_LIMIT, classify_attempts, ticket_of
from tests._support.configs import write_spec
from tests._support.stores import assert_each_trial_complete_once, complete_as_of, local_ledger

pytestmark = pytest.mark.slow


def failed_for_config(results, spec_path, keys=None):
    """A ledger where the study's trials (or those of `keys`) ended `config`, as a host without their data left it."""
    trials = expand(load_spec(spec_path))
    ledger = Ledger.open(local_ledger(results))
    for t in trials:
        if keys is None or t.key in keys:
            ledger.enqueue(ticket_of(t))
            attempt = ledger.claim({t.key}, Owner.me())
            ledger.fail(attempt, Ending.CONFIG, "data.root: cifar10 not found at /nowhere")
    return trials, ledger


def test_status_and_report_read_the_sweep_as_it_was_run_with_set(tmp_path, capsys):
    """`status` without the sweep's --set used to say "pending" for finished trials (and report: "run sweep")."""
    spec = write_spec(tmp_path, seeds=1)
    results = tmp_path / "results"
    assert main(["sweep", str(spec), "--results", str(results), "--no-progress", "--set", "train.epochs=1"]) == 0
    capsys.readouterr()
    assert main(["status", str(spec), "--results", str(results)]) == 0
    assert capsys.readouterr().out.startswith("2 done, 0 running, 0 failed, 0 pending")
    # told otherwise, it reads those trials instead
    assert main(["status", str(spec), "--results", str(results), "--set", "train.epochs=2"]) == 0
    assert capsys.readouterr().out.startswith("0 done, 0 running, 0 failed, 2 pending")
    # a study first run from its file is found again by its name in that results folder
    assert main(["status", "tiny", "--results", str(results)]) == 0
    assert capsys.readouterr().out.startswith("2 done")
    ledger = Ledger.open(local_ledger(results))
    note = ledger.note("tiny")
    assert note["overrides"] == {"train.epochs": 1} and note["identity_version"] == IDENTITY_VERSION
    assert note["spec"] == str(spec.resolve())
    recorded = ledger.trials("tiny")
    assert len(recorded) == 2 and {r.identity_version for r in recorded} == {IDENTITY_VERSION}


def test_retry_queues_failed_trials_and_a_sweep_trains_them(tmp_path, capsys):
    spec = write_spec(tmp_path, seeds=1)
    results = tmp_path / "results"
    trials, ledger = failed_for_config(results, spec)
    assert main(["status", str(spec), "--results", str(results)]) == 0
    assert capsys.readouterr().out.startswith("0 done, 0 running, 2 failed")
    assert main(["retry", str(spec), "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("queued 2 trials again") and "was failed: config: data.root" in out
    assert [a.ticket.number for a in ledger.attempts() if a.state.name == "WAITING"] == [2, 2]
    assert main(["retry", str(spec), "--results", str(results)]) == 0  # nothing failed any more: nothing queued
    assert capsys.readouterr().out.startswith("queued 0 trials again")
    assert main(["sweep", str(spec), "--results", str(results), "--no-progress"]) == 0
    assert_each_trial_complete_once(local_ledger(results), results, 2)
    done = trials[0].key
    assert main(["retry", str(spec), "--results", str(results), "--trial", done]) == 0
    assert f"not queued: {trials[0].label} seed 0 [{done}] is done" in capsys.readouterr().out


def test_retry_of_an_unknown_trial_is_one_line(tmp_path, capsys):
    spec = write_spec(tmp_path, seeds=1)
    results = tmp_path / "results"
    failed_for_config(results, spec)
    assert main(["retry", str(spec), "--results", str(results), "--trial", "0123456789ab-s0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--trial: 0123456789ab-s0 is not a trial of 'tiny'" in err


def test_a_sweep_tries_configuration_failures_again_once_the_host_passes_its_checks(tmp_path, capsys):
    """A trial failed for missing data could never be retried: the same keys, the old error, forever."""
    spec = write_spec(tmp_path, seeds=1)
    results = tmp_path / "results"
    trials, ledger = failed_for_config(results, spec, {expand(load_spec(spec))[0].key})
    said = []
    requeue_config_failures(ledger, trials, max_retries=1, say=said.append)
    assert len(said) == 1 and "1 trials failed for their configuration before" in said[0]
    assert [(a.ticket.number, a.state.name) for a in ledger.attempts()] == [(1, "FAIL"), (2, "WAITING")]
    requeue_config_failures(ledger, trials, max_retries=1, say=said.append)  # queued already: nothing more
    assert len(ledger.attempts()) == 2 and len(said) == 1


def test_a_sweep_says_it_trains_the_trials_whose_results_are_under_an_earlier_identity(tmp_path, capsys):
    """Keys changed with identity version 4: the sweep trains such trials again (their results were trained from
    another initialisation), saying so in one line, and the earlier results stay in the ledger, apart."""
    spec = write_spec(tmp_path, seeds=1)
    results = tmp_path / "results"
    trials = expand(load_spec(spec))
    old = complete_as_of(local_ledger(results), "tiny", trials, version=3)
    assert main(["sweep", str(spec), "--results", str(results), "--no-progress"]) == 0
    said = [line for line in capsys.readouterr().err.splitlines() if "earlier identity" in line]
    assert said == ["sweep: 2 of its 2 trials have results only under an earlier identity (version 3); they are "
                    f"trained under identity version {IDENTITY_VERSION}"]  # fmt: skip
    done = [a.key for a in Ledger.open(local_ledger(results)).attempts() if a.state.name == "COMPLETE"]
    assert sorted(done) == sorted(t.key for t in [*old, *trials])
    assert main(["status", str(spec), "--results", str(results)]) == 0
    assert capsys.readouterr().out.startswith("2 done, 0 running, 0 failed, 0 pending")
    assert main(["sweep", str(spec), "--results", str(results), "--no-progress"]) == 0  # nothing left to say
    assert "earlier identity" not in capsys.readouterr().err


def test_lost_attempts_count_toward_a_limit_of_their_own():
    """A trial that kills or freezes its host cycled through hosts forever: `lost` used no retry."""

    class A:
        def __init__(self, kind):
            self.state, self.kind = type("S", (), {"name": "FAIL"}), kind

    from ablations.sweep.ledger import State

    def attempts(*kinds):
        out = []
        for k in kinds:
            a = A(k)
            a.state = State.FAIL
            out.append(a)
        return out

    assert classify_attempts(attempts(*[Ending.LOST] * (LOSS_LIMIT - 1)), max_retries=0) == "pending"
    assert classify_attempts(attempts(*[Ending.LOST] * (LOSS_LIMIT - 1), Ending.STALLED), max_retries=0) == "failed"
    assert classify_attempts(attempts(Ending.STOPPED, Ending.STOPPED, Ending.STOPPED, Ending.STOPPED), 0) == "pending"

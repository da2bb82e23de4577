"""What a sweep shows while it runs: a line per trial that ends (piped or not), the running trials' progress files and
the bars read from them."""

import io
import time

from optuna.trial import TrialState

from ablations.outcomes import Ending
from ablations.study.load import load_spec
from ablations.study.trials import expand
from ablations.sweep.ledger import Attempt, Owner, Ticket
from ablations.sweep.live import LIVE, Live, LiveFile, read_live
from ablations.sweep.progress import Progress, ended_line, took
from ablations.training.steps import Progress as Steps
from tests._support.configs import write_spec

T = Ticket("0123456789ab-s1", {"train": {"epochs": 3}}, "0123456789ab", 1, "r=8", {}, ["s"])
C, F, R = TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING


def tiny_trials(tmp_path):
    return expand(load_spec(write_spec(tmp_path)))


def done(i: int, test: float, val: float, seconds: float = 125.0) -> Attempt:
    summary = {"test_top1_err": test, "final_val_top1_err": val}
    return Attempt(i, C, T, outcome=Ending.FINISHED, result={"summary": summary}, claimed_at=1000.0,
                   ended_at=1000.0 + seconds)  # fmt: skip


def test_durations_read_as_people_read_them():
    assert [took(s) for s in (0, 42.4, 185, 3599, 7620)] == ["0s", "42s", "3m05s", "59m59s", "2h07m"]


def test_a_line_per_ending_names_its_errors_time_or_failure_and_what_happens_next():
    assert ended_line(done(1, 12.345, 11.0), False) == "done     r=8 seed 1: test top-1 err 12.35%, val 11.00% in 2m05s"
    diverged = Attempt(2, C, T, outcome=Ending.DIVERGED, result={"summary": {"diverged_epoch": 2}})
    assert ended_line(diverged, False) == "diverged r=8 seed 1 at epoch 2"
    crash = Attempt(3, F, T, kind=Ending.CRASH, reason="RuntimeError: boom", claimed_at=0.0, ended_at=7.0)
    assert ended_line(crash, True) == "failed   r=8 seed 1 after 7s: crash: RuntimeError: boom; queued again"
    assert ended_line(crash, False).endswith("; out of retries")
    stopped = Attempt(4, F, T, kind=Ending.STOPPED, reason="stopped by SIGINT")
    assert ended_line(stopped, True) == "stopped  r=8 seed 1: stopped: stopped by SIGINT; resumes next time"


def test_piped_progress_says_each_ending_once_and_not_the_earlier_ones(tmp_path, capsys):
    progress = Progress(False, tiny_trials(tmp_path), tmp_path)
    earlier = done(1, 20.0, 19.0)
    progress.show(1, [earlier], {})
    assert capsys.readouterr().err == ""  # ended before this sweep looked: not news
    later = done(2, 10.0, 9.0)
    progress.show(2, [earlier, later], {})
    progress.show(2, [earlier, later], {})
    err = capsys.readouterr().err.splitlines()
    assert err == ["[2/4] done     r=8 seed 1: test top-1 err 10.00%, val 9.00% in 2m05s"]


def test_the_closing_lines_give_the_counts_and_the_next_commands(tmp_path, capsys):
    from ablations.outcomes import Standing

    Progress(False, [], tmp_path / "my results").closing("demo", {Standing.DONE: 4, Standing.FAILED: 1})
    first, second = capsys.readouterr().err.splitlines()
    assert first.startswith("sweep demo: 4 done, 1 failed after ")
    where = f"--results '{tmp_path / 'my results'}'"
    assert (
        second == f"next: senet-ablate status demo {where} · senet-ablate report demo {where} · senet-ablate ui {where}"
    )


def test_a_progress_file_follows_the_epoch_and_goes_when_the_trial_ends(tmp_path, monkeypatch):
    monkeypatch.setattr("ablations.sweep.live.PERIOD_S", 0.02)
    steps = Steps(batches=10)
    with LiveFile(tmp_path, 3, steps) as live:
        live.epoch = 1  # resumed after epoch 1
        steps.batch = 4
        deadline = time.monotonic() + 5
        while read_live(tmp_path) != Live(1, 3, 4, 10, None) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert read_live(tmp_path) == Live(1, 3, 4, 10, None)
        assert read_live(tmp_path).done == 1.4
        steps.batch = 10  # the epoch's last batch, then its validation
        live.epoch_done(2, 17.5)
        while read_live(tmp_path) != Live(2, 3, 0, 10, 17.5) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert read_live(tmp_path) == Live(2, 3, 0, 10, 17.5)
    assert not (tmp_path / LIVE).exists() and read_live(tmp_path) is None
    (tmp_path / LIVE).write_text("{not json")
    assert read_live(tmp_path) is None  # a torn or foreign file costs the bar its detail, nothing else


def test_terminal_bars_show_the_running_epochs_batches_and_last_validation_error(tmp_path):
    from rich.console import Console

    trials = tiny_trials(tmp_path)
    progress = Progress(True, trials, tmp_path)
    out = io.StringIO()
    progress.bar.live.console = Console(file=out, width=160, force_terminal=False)
    key = trials[0].key
    folder = tmp_path / "runs" / key
    folder.mkdir(parents=True)
    running = Attempt(7, R, Ticket(key, {}, trials[0].config_hash, trials[0].seed, trials[0].label, {}, ["s"]),
                      owner=Owner.me(), epoch=1)  # fmt: skip
    epochs = trials[0].config.train.epochs
    (folder / LIVE).write_text(f'{{"epoch": 1, "epochs": {epochs}, "batch": 5, "batches": 20, "val_top1_err": 31.25}}')
    progress.show(0, [running], {})
    task = next(t for t in progress.bar.tasks if t.id == progress._tasks[7])
    assert task.completed == 1.25 and task.total == epochs
    assert task.fields["note"] == f"epoch 2/{epochs} · batch 5/20 · val err 31.25%"
    progress.show(1, [], {})  # it ended: its bar goes
    assert [t.description for t in progress.bar.tasks] == ["trials"]

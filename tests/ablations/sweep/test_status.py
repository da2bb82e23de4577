"""Where a trial stands: the one set of rules the reconciler and `status` share, and the read side on them."""

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from optuna.trial import TrialState

from ablations.cli import main
from ablations.config import Host
from ablations.paths import ledger_file
from ablations.study.load import load_spec
from ablations.study.trials import expand
from ablations.sweep.clean import megabytes
from ablations.sweep.ledger import Attempt, Ledger, Ticket
from ablations.sweep.status import ReadOptions, classify_attempts, seconds_text, study_status
from tests._support.configs import write_spec
from tests._support.processes import ENV
from tests._support.results import STUDY
from tests._support.stores import complete_as_of, local_ledger

T = Ticket("0123456789ab-s0", {}, "0123456789ab", 0, "x", {}, ["s"])
W, R, C, F = TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE, TrialState.FAIL


def attempts(*story):
    return [Attempt(i, state, T, kind=kind) for i, (state, kind) in enumerate(story)]


@pytest.mark.parametrize(
    ("story", "max_retries", "state"),
    [
        ((), 1, "pending"),
        (((W, None),), 0, "pending"),
        (((R, None),), 0, "running"),
        (((C, None),), 0, "done"),
        (((F, "crash"), (C, None)), 0, "done"),
        (((F, "crash"),), 1, "pending"),  # one retry left
        (((F, "crash"), (F, "oom")), 1, "failed"),  # crash and oom count
        (((F, "stopped"), (F, "lost"), (F, "stopped")), 0, "pending"),  # stopped by us / host lost: no retry used
        (((F, "config"),), 5, "failed"),  # a configuration error is never retried
        (((F, "crash"), (W, None)), 0, "pending"),  # queued again by an earlier, more generous sweep
    ],
)
def test_classify(story, max_retries, state):
    assert classify_attempts(attempts(*story), max_retries) == state


def test_read_options_name_the_ledger_of_the_results_folder(tmp_path):
    assert ReadOptions(results=tmp_path).storage_url == str(ledger_file(tmp_path))
    assert ReadOptions(results=tmp_path, storage="sqlite:///x.db").storage_url == "sqlite:///x.db"


def test_a_study_without_a_ledger_reads_as_pending_and_nothing_is_written(tmp_path):
    spec = load_spec("demo")
    trials, found = study_status(spec, ReadOptions(results=tmp_path, device="cpu"))
    assert [t.key for t in trials] == [t.key for t in expand(spec, host=Host("cpu"))] and [
        s.trial for s in found
    ] == trials
    assert {s.state for s in found} == {"pending"} and not any(s.known for s in found)
    assert not tmp_path.exists() or not list(tmp_path.iterdir())


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """`folder` read-only for this process: a read-only bind mount over itself as root (whom permissions do not
    stop), its permissions taken away otherwise."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")]}
        for p, mode in modes.items():
            p.chmod(mode & ~0o222)
        try:
            yield
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
        return
    mount = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"a read-only folder needs a bind mount here: {mount.stderr.strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)
        with pytest.raises(OSError):
            (folder / "probe").write_text("x")
        yield
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=True)  # this process may still hold a file open


def _finished_sweep(tmp_path: Path, *args: str) -> tuple[Path, Path]:
    spec = write_spec(tmp_path, name="readback", grid={"se.excitation": ["sigmoid"]}, seeds=1)
    results = tmp_path / "results"
    cmd = [sys.executable, "-m", "ablations.cli", "sweep", str(spec), "--results", str(results), "--no-progress"]
    done = subprocess.run([*cmd, *args], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return spec, results


@pytest.mark.e2e
def test_status_and_report_read_a_read_only_results_folder(tmp_path, capsys):
    """Item 16: `report` crashed on a read-only results folder (it logs the report to the study's parent run, whose
    artifacts live there). It reads, writes the report where --out says and notes what it could not attach. The
    ledger lies elsewhere here: its own read-only opening belongs to the ledger (see the next test)."""
    ledger = tmp_path / "ledger" / "ledger.db"
    spec, results = _finished_sweep(tmp_path, "--storage", str(ledger))
    out = tmp_path / "report"
    where = ["--results", str(results), "--storage", str(ledger)]
    with read_only(results):
        capsys.readouterr()
        assert main(["status", str(spec), *where]) == 0
        assert "1 done, 0 running, 0 failed, 0 pending" in capsys.readouterr().out
        assert main(["report", str(spec), *where, "--out", str(out)]) == 0
        err = capsys.readouterr().err
    assert "1 finished" in (out / "README.md").read_text()
    assert "not attached to the study's parent run" in err and "Traceback" not in err


@pytest.mark.e2e
def test_status_and_report_read_a_wholly_read_only_results_folder(tmp_path, capsys):
    spec, results = _finished_sweep(tmp_path)
    with read_only(results):
        capsys.readouterr()
        assert main(["status", str(spec), "--results", str(results)]) == 0
        assert "1 done" in capsys.readouterr().out
        assert main(["report", str(spec), "--results", str(results), "--out", str(tmp_path / "report")]) == 0


@pytest.mark.parametrize(("version", "change"), [(3, "before common random numbers"), (2, "before the data digest")])
def test_results_under_an_earlier_identity_are_shown_as_such_and_not_as_the_trials(tmp_path, capsys, version, change):
    """Keys changed with identity versions 3 (the data digest) and 4 (common random numbers): results made under an
    earlier version stay findable and are shown as such, never counted as the current trial's (it is pending:
    `sweep` trains it under version 4)."""
    spec = write_spec(tmp_path, seeds=1)
    results = tmp_path / "results"
    trials = expand(load_spec(spec))
    old = complete_as_of(local_ledger(results), "tiny", trials, version=version)
    assert {t.key for t in old}.isdisjoint(t.key for t in trials)
    _, found = study_status(load_spec(spec), ReadOptions(results=results))
    assert [(s.state, s.earlier, s.known) for s in found] == [("pending", t.key, False) for t in old]
    assert main(["status", str(spec), "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("0 done, 0 running, 0 failed, 2 pending")
    for new, before in zip(trials, old, strict=True):
        assert (f"[{new.key}] a result under identity version {version} ({change}), key {before.key}; "
                "`sweep` trains it under version 4") in out  # fmt: skip


def test_status_and_report_on_a_host_without_the_data_read_the_trials_the_ledger_recorded(tmp_path, capsys):
    """The keys hold the digest of the dataset's files, so a host without them (a login node reading a shared
    results folder) could not say where a finished sweep stands; it reads the sweep's trials from the ledger."""
    from tests._support.datasets import write_fashion

    data = tmp_path / "fashion"
    write_fashion(data)
    spec = write_spec(tmp_path, name="nodata", grid={"se.excitation": ["sigmoid"]}, seeds=1,
                      data={"dataset": "fashion_mnist", "root": str(data), "train_subset": 64, "val_subset": 16,
                            "test_subset": 16, "augment": False})  # fmt: skip
    results = tmp_path / "results"
    assert main(["sweep", str(spec), "--results", str(results), "--no-progress"]) == 0
    data.rename(tmp_path / "elsewhere")
    capsys.readouterr()
    assert main(["status", str(spec), "--results", str(results)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == "1 done, 0 running, 0 failed, 0 pending" and "se.excitation=sigmoid seed 0" in out
    assert "this host lacks the data files (fashion_mnist)" in err
    assert main(["report", str(spec), "--results", str(results), "--out", str(tmp_path / "report")]) == 0
    assert "se.excitation=sigmoid" in (tmp_path / "report" / "README.md").read_text()
    assert main(["status", str(spec), "--results", str(results), "--set", "train.epochs=3"]) == 2  # other trials
    assert "data.root: Fashion-MNIST not found" in capsys.readouterr().err


def test_status_shows_each_trial_s_metrics_wall_time_and_run_id_from_the_ledger(made_results, capsys):
    """Issue 22 item 6: `status` showed states only; `knockout --run` and `excitation` need the run id."""
    m = made_results
    done = {a.key: a for a in Ledger.open(local_ledger(m.results)).attempts() if a.state == TrialState.COMPLETE}
    capsys.readouterr()
    assert main(["status", str(m.spec), "--results", str(m.results)]) == 0
    out = capsys.readouterr().out
    lines = {line.split("[")[1].split("]")[0]: line for line in out.splitlines() if "[" in line}
    for t in m.trials[:2]:
        a = done[t.key]
        test, val = (a.result["summary"][k] for k in ("test_top1_err", "final_val_top1_err"))
        assert lines[t.key].endswith(
            f"] finished · test top-1 {test:.2f} % · val top-1 {val:.2f} % · {seconds_text(a.ended_at - a.claimed_at)}"
            f" · run {m.run_ids[t.key]}"
        ), lines[t.key]
    assert lines[m.trials[2].key].endswith(f"epoch 0 · run {m.run_ids[m.trials[2].key]}")  # running: where, its run
    assert lines[m.trials[5].key].endswith(f"[{m.trials[5].key}]")  # never queued: nothing to say
    disk = out.splitlines()[-1]
    assert disk.startswith(f"disk: {megabytes(_bytes(m.results / 'runs'))} in 5 trial folders under {m.results}/runs")
    assert f"`senet-ablate clean {STUDY} --dry-run`" in disk


def _bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_seconds_read_as_people_read_them():
    assert [seconds_text(s) for s in (4.25, 42.4, 725, 10_920)] == ["4.2 s", "42 s", "12 min 05 s", "3 h 02 min"]


def test_status_without_a_study_lists_the_studies_of_the_results_folder(made_results, capsys):
    m = made_results
    capsys.readouterr()
    assert main(["status", "--results", str(m.results)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{m.results / 'ledger.db'}: 1 study"
    assert out[1].startswith(f"  {STUDY}  6 trials: 2 done, 1 running, 1 failed, 2 pending  · last sweep 20")
    assert out[1].endswith(f" · {megabytes(_bytes(m.results / 'runs'))} under {m.results}/runs")
    assert out[2] == f"`senet-ablate status STUDY --results {m.results}` shows a study's trials"


def test_the_listing_covers_every_study_of_a_storage_ledger(tmp_path, capsys):
    """A `--storage` ledger holds the studies of several results folders; a study's Slurm note is not a study."""
    spec = write_spec(tmp_path, seeds=1)
    ledger = tmp_path / "shared" / "ledger.db"
    trials = expand(load_spec(spec))
    complete_as_of(str(ledger), "tiny", trials[:1], version=2)
    Ledger.open(str(ledger)).set_note("other", {"keys": [trials[1].key]})
    Ledger.open(str(ledger)).set_note("other#slurm", {"jobs": ["12"]})
    capsys.readouterr()
    assert main(["status", "--results", str(tmp_path / "nowhere"), "--storage", str(ledger)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{ledger}: 2 studies"
    assert out[1].startswith("  other  1 trials: 0 done, 0 running, 0 failed, 1 pending  · last sweep 20")
    assert out[2].startswith("  tiny   1 trials: 1 done, 0 running, 0 failed, 0 pending  · last sweep —")


def test_the_listing_of_a_folder_without_a_ledger_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["status", "--results", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (f"senet-ablate: error: --results: no sweep ledger at {tmp_path}/ledger.db; "
                                       "give the --results folder (or --storage) a sweep ran with\n")  # fmt: skip
    assert not list(tmp_path.iterdir())

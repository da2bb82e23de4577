"""`senet-ablate export` and the notebook API: one row per trial with the values the ledger and MLflow hold, the
same frame from `ablations.results`, the report's analysis as objects, and one line for each bad option."""

import math
import os

import pandas as pd
import pytest
import sqlalchemy as sa

import ablations
from ablations.cli import main
from ablations.errors import SenetError
from ablations.outcomes import RunStatus
from ablations.paths import RESULT
from ablations.reporting.analysis import VAL1, analyse
from ablations.reporting.export import write_frame
from ablations.reporting.paper_match import TOP1
from ablations.reporting.results import gather
from ablations.study.load import load_spec
from ablations.sweep.ledger import Ledger, State
from ablations.sweep.status import ReadOptions, study_status
from tests._support.results import STUDY, copy_results
from tests._support.stores import local_ledger, tracker

STATES = ["done", "done", "running", "failed", "pending", "pending"]


def _export(m, capsys, *args):
    capsys.readouterr()
    assert main(["export", str(m.spec), "--results", str(m.results), *args]) == 0
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def exported(made_results, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "trials.csv"
    assert main(["export", str(made_results.spec), "--results", str(made_results.results), "--out", str(out)]) == 0
    return pd.read_csv(out).set_index("key")


def test_export_holds_a_row_per_trial_with_the_ledger_s_values(made_results, exported):
    m = made_results
    assert list(exported.columns[:11]) == ["study", "level", "se.excitation", "seed", "run_id", "state", "outcome",
                                           "attempts", "duration_s", "reason", "best_val_epoch"]  # fmt: skip
    assert sorted(exported.index) == sorted(t.key for t in m.trials)
    assert [exported.loc[t.key, "state"] for t in m.trials] == STATES
    assert [exported.loc[t.key, "se.excitation"] for t in m.trials] == ["sigmoid", "tanh"] * 3
    attempts = Ledger.open(local_ledger(m.results)).attempts()
    for a in (a for a in attempts if a.state == State.COMPLETE):
        row = exported.loc[a.key]
        assert row["run_id"] == a.run_id == m.run_ids[a.key] and row["outcome"] == "finished"
        assert row["duration_s"] == a.ended_at - a.claimed_at
        summary = a.result["summary"]
        assert {k: row[k] for k in summary} == summary  # every summary metric, exactly
    failed = exported.loc[m.trials[3].key]
    assert failed["reason"] == "config: data.root: damaged" and math.isnan(failed[TOP1])
    assert exported.loc[m.trials[4].key, "attempts"] == 2 and exported.loc[m.trials[5].key, "attempts"] == 0


def test_export_agrees_with_mlflow(made_results, exported):
    runs = tracker(made_results.results).trial_runs(status=RunStatus.FINISHED)
    assert len(runs) == 2
    for run in runs:
        row = exported.loc[run.key]
        assert row["run_id"] == run.run_id
        assert (row[TOP1], row[VAL1]) == (run.metrics[TOP1], run.metrics[VAL1])


def test_parquet_and_the_python_api_give_the_same_frame(made_results, tmp_path, capsys):
    m = made_results
    out = tmp_path / "t.parquet"
    said = _export(m, capsys, "--out", str(out))
    frame = ablations.results(STUDY, results=m.results)
    assert said == f"6 trials of {STUDY} written to {out} (parquet, {len(frame.columns)} columns)\n"
    pd.testing.assert_frame_equal(pd.read_parquet(out), frame)
    assert [f.name for f in tmp_path.iterdir()] == ["t.parquet"]  # no temp file left beside it
    stdout = _export(m, capsys, "--out", "-")
    assert stdout.splitlines()[0].startswith("study,level,se.excitation,seed,key,run_id,state,")
    assert len(stdout.splitlines()) == 7


def test_the_default_file_is_under_reports(made_results, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _export(made_results, capsys, "--format", "parquet")
    assert (tmp_path / "reports" / STUDY / "trials.parquet").is_file()


def test_the_api_s_analysis_is_the_report_s(made_results):
    m = made_results
    got = ablations.analysis(STUDY, results=m.results)
    spec = load_spec(m.spec)
    _, found = study_status(spec, ReadOptions(results=m.results))
    t = tracker(m.results)
    want = analyse(gather(spec, found, t.trial_runs({s.trial.key for s in found}), t))
    assert [(r.level.label, r.top1, r.val1, r.comparison) for r in got.tables[0].rows] == [
        (r.level.label, r.top1, r.val1, r.comparison) for r in want.tables[0].rows
    ]
    sigmoid, tanh = got.tables[0].rows
    assert sigmoid.top1.n == 1 and sigmoid.comparison is None  # the reference
    assert tanh.comparison.pair.diffs == (tanh.top1.mean - sigmoid.top1.mean,)
    assert tanh.comparison.verdict == "no test (n < 2)"


def test_the_api_lists_the_studies(made_results):
    frame = ablations.studies(made_results.results)
    assert frame[["study", "trials", "done", "running", "failed", "pending"]].values.tolist() == [
        [STUDY, 6, 2, 1, 1, 2]
    ]
    assert frame["disk_bytes"].iloc[0] == sum(
        p.stat().st_size for p in (made_results.results / "runs").rglob("*") if p.is_file()
    )


def test_results_the_ledger_lacks_are_read_from_result_json_then_mlflow(made_results, tmp_path):
    """A ledger imported from senet-ablate 0.2 holds no result: the trial's result.json, else its MLflow run."""
    m = copy_results(made_results, tmp_path)
    first, second = m.trials[0].key, m.trials[1].key
    want = ablations.results(STUDY, results=m.results).set_index("key")
    engine = sa.create_engine(f"sqlite:///{m.results / 'ledger.db'}")
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE senet_attempts SET result = NULL WHERE key IN (:a, :b)"), {"a": first, "b": second}
        )
    engine.dispose()
    (m.folder(1) / RESULT).unlink()
    got = ablations.results(STUDY, results=m.results).set_index("key")
    pd.testing.assert_series_equal(got.loc[first], want.loc[first])  # from result.json: the same numbers
    run = tracker(m.results).trial_runs({second}, status=RunStatus.FINISHED)[0]
    assert got.loc[second, "run_id"] == run.run_id and got.loc[second, TOP1] == run.metrics[TOP1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "xlsx"], "--format: 'xlsx' is not allowed; allowed: csv, parquet"),
        (["--out", "t.xlsx"], "--out: t.xlsx ends in .xlsx; allowed: a .csv or .parquet path, or - for stdout"),
        (["--out", "t.csv", "--format", "parquet"],
         "--out: t.csv ends in .csv but --format is parquet; allowed: a .parquet path"),
        (["--out", "-", "--format", "parquet"], "--out: - (stdout) takes CSV only; allowed for parquet: a file path"),
    ],
)  # fmt: skip
def test_a_bad_format_or_path_is_one_line_and_exit_2(made_results, capsys, args, message):
    assert main(["export", str(made_results.spec), "--results", str(made_results.results), *args]) == 2
    assert capsys.readouterr().err == f"senet-ablate: error: {message}\n"


def test_an_unwritable_path_is_one_line_and_a_folder_is_refused(made_results, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    where = ["export", str(made_results.spec), "--results", str(made_results.results), "--out"]
    assert main([*where, str(tmp_path / "file" / "t.csv")]) == 2
    assert (
        capsys.readouterr().err
        == f"senet-ablate: error: --out: cannot write {tmp_path}/file/t.csv ({tmp_path}/file is a file)\n"
    )
    (tmp_path / "d.csv").mkdir()
    assert main([*where, str(tmp_path / "d.csv")]) == 2
    assert capsys.readouterr().err.startswith(f"senet-ablate: error: --out: {tmp_path}/d.csv is a folder; allowed: ")


def test_export_of_a_study_the_folder_does_not_hold_names_the_ones_it_does(made_results, capsys):
    assert main(["export", "demoo", "--results", str(made_results.results)]) == 2
    assert capsys.readouterr().err == (
        f"senet-ablate: error: study: 'demoo' has no trials in {made_results.results}/ledger.db; the studies there: "
        f"{STUDY} (see `senet-ablate status --results DIR`)\n"
    )
    with pytest.raises(SenetError, match="'demo' has no trials in"):
        ablations.results("demo", results=made_results.results)


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    out = tmp_path / "t.parquet"
    out.write_bytes(b"old")
    frame = pd.DataFrame({"a": [1.0]})

    def torn(self, f, **kwargs):
        f.write(b"half")
        raise OSError(28, os.strerror(28))

    monkeypatch.setattr(pd.DataFrame, "to_parquet", torn)
    with pytest.raises(SenetError, match=f"--out: cannot write {out} \\(No space left on device\\)"):
        write_frame(frame, out, "parquet")
    assert out.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["t.parquet"]


def test_importing_ablations_stays_cheap():
    """The notebook API imports what it needs when called: `import ablations` loads no room, pandas, torch or MLflow."""
    import subprocess
    import sys

    code = "import sys, ablations; print(sorted(m for m in sys.modules if m.split('.')[0] in {'pandas', 'torch', " \
        "'mlflow', 'sqlalchemy'} or m.startswith('ablations.')))"  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout == "[]\n"

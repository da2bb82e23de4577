"""`report` against a tiny MLflow store written by hand: the aggregated numbers, the cells that did not finish,
the ordering against the paper, deterministic files, figures, and logging to the parent run."""

import math

import pandas as pd
import pytest
import yaml
from matplotlib.image import imread

from ablations.errors import SenetError
from ablations.paper import paper_rows
from ablations.reporting import figures
from ablations.reporting.excitation import excitation_report
from ablations.reporting.report import paper_match, write_report
from ablations.reporting.stats import summarize
from ablations.spec import expand, load_spec
from ablations.tracking import Tracker
from ablations.training.engine import train

SPEC = {
    "name": "tiny_gate",
    "description": "The excitation gate in miniature, for tests.",
    "mirrors": ["table12_excitation_operator"],
    "base": {
        "model": {"name": "resnet20"},
        "se": {"reduction": 4},
        "data": {
            "dataset": "synthetic",
            "val_size": 48,
            "synthetic_train": 240,
            "synthetic_test": 30,
            "synthetic_size": 8,
            "synthetic_classes": 3,
        },
        "train": {"epochs": 2, "batch_size": 32, "eval_batch_size": 64},
    },  # fmt: skip
    "grid": {"se.excitation": ["sigmoid", "tanh", "relu"]},
    "extra": [{"label": "no SE", "set": {"se.enabled": False}}],
    "seeds": 3,
}
# (test top-1, test top-5) per level and seed; None = no FINISHED run (see the store fixture for what happened)
RESULTS = {
    "sigmoid": {0: (10.0, 2.0), 1: (12.0, 3.0), 2: (14.0, 4.0)},
    "tanh": {0: (12.0, 3.0), 1: (15.0, 3.0), 2: (16.5, 6.0)},
    "relu": {0: (20.0, 7.0), 1: None, 2: None},  # seed 0 killed once then finished; 1 diverged; 2 failed
    "no SE": {0: (13.5, 4.0), 1: (15.0, 5.0), 2: None},  # seed 2 never ran
}
PNG = b"\x89PNG\r\n\x1a\n"


def summary(top1, top5):
    return {"final_val_top1_err": top1 + 1, "final_val_top5_err": top5 + 1, "test_top1_err": top1,
            "test_top5_err": top5, "test_loss": 1.0, "best_val_top1_err": top1 - 5, "best_val_epoch": 1,
            "epochs": 2, "train_time_s": 30.0, "images_per_s": 1000.0, "peak_mem_mb": 100.0, "params": 250_000,
            "gflops": 0.01}  # fmt: skip


def start(tracker, parent, trial):
    info = {"key": trial.key, "config_hash": trial.config_hash, "seed": trial.seed, "label": trial.label,
            "factors": trial.factors, "flat": trial.config.flat()}  # fmt: skip
    return tracker.start_trial("tiny_gate", parent, info, "cpu")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A results folder whose MLflow store holds the runs of RESULTS, made the way workers make them."""
    root = tmp_path_factory.mktemp("report")
    path = root / "tiny_gate.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    results = root / "results"
    results.mkdir()
    tracker = Tracker(f"sqlite:///{results / 'mlflow.db'}", results)
    parent = tracker.parent_run("tiny_gate", SPEC["description"])
    tracker.finish_parent(parent, False)
    for trial in expand(load_spec(path)):
        label = trial.label.removeprefix("se.excitation=")
        value = RESULTS[label][trial.seed]
        if label == "relu" and trial.seed == 0:  # an attempt killed mid-run, with nonsense epoch metrics
            killed = start(tracker, parent, trial)
            tracker.log_epoch(killed, 1, {"val_top1_err": 99.0})
            tracker.end(killed, "KILLED")
        if value is None and label == "relu" and trial.seed == 1:
            run = start(tracker, parent, trial)
            tracker.log_epoch(run, 1, {"val_top1_err": 60.0})
            tracker.log_summary(run, {"diverged_epoch": 2, "epochs": 1}, "diverged")
            tracker.end(run, "FINISHED")
        elif value is None and label == "relu":
            tracker.end(start(tracker, parent, trial), "FAILED")
        elif value is not None:
            run = start(tracker, parent, trial)
            for epoch in (1, 2):
                tracker.log_epoch(run, epoch, {"val_top1_err": value[0] + 10 / epoch, "val_top5_err": value[1]})
            tracker.log_summary(run, summary(*value), "finished")
            tracker.end(run, "FINISHED")
    return path, results, tracker, parent


@pytest.fixture(scope="module")
def report(store, tmp_path_factory):
    path, results, tracker, parent = store
    out = tmp_path_factory.mktemp("out")
    readme = write_report(str(path), results=results, tracking_uri=None, out=out, overrides={})
    return readme, readme.read_text(), pd.read_csv(out / "summary.csv").set_index("level")


def row_of(markdown: str, level: str, table: int = 0) -> list[str]:
    rows = [line for line in markdown.splitlines() if line.startswith(f"| {level} |")]
    return [c.strip() for c in rows[table].strip("|").split("|")]


def test_rows_hold_hand_computed_statistics(report):
    _, md, _ = report
    # sigmoid 10, 12, 14: mean 12, std 2, t-interval 12 ± 4.303·2/√3 = [7.03, 16.97]
    sigmoid = row_of(md, "sigmoid")
    assert sigmoid[1:5] == ["3/3", "12.00 ± 2.00 [7.03, 16.97]", "3.00 ± 1.00 [0.52, 5.48]",
                            "13.00 ± 2.00 [8.03, 17.97]"]  # fmt: skip
    assert sigmoid[5] == "*reference*"
    # vs no SE over seeds 0, 1: -3.5, -3 → -3.25 ± 0.354, t(1) = 12.706 → [-6.43, -0.07]
    assert sigmoid[6] == "-3.25 [-6.43, -0.07] better (n = 2)"
    tanh = row_of(md, "tanh")
    # tanh − sigmoid: 2, 3, 2.5 → 2.5 ± 0.5 → [1.26, 3.74]; tanh − no SE: -1.5, 0 → -0.75 ± 1.06 → [-10.28, 8.78]
    assert tanh[2] == "14.50 ± 2.29 [8.81, 20.19]"
    assert tanh[5] == "+2.50 [+1.26, +3.74] worse (n = 3)"
    assert tanh[6] == "-0.75 [-10.28, +8.78] within noise (n = 2)"
    no_se = row_of(md, "no SE")
    assert no_se[1] == "2/3 · 1 pending" and no_se[5] == "+3.25 [+0.07, +6.43] worse (n = 2)"
    assert no_se[6] == "*baseline*"


def test_paper_values_sit_beside_our_rows(report):
    _, md, _ = report
    assert row_of(md, "tanh")[7] == "23.00 / 6.38 (Tanh)"
    assert row_of(md, "no SE")[7] == "23.30 / 6.55 (ResNet-50, Table 10)"  # Table 12 has no no-SE row
    assert "ImageNet ResNet-50 errors" in md


def test_diverged_failed_killed_and_missing_cells_are_marked(report):
    _, md, csv = report
    relu = row_of(md, "relu")
    assert relu[1] == "1/3 · 1 diverged · 1 failed"
    assert relu[2] == "20.00 (n = 1)"  # the FINISHED run, not the killed attempt
    assert relu[5] == "+10.00 (n = 1): n < 2"
    assert "`relu` seed 1" in md and "diverged: diverged at epoch 2" in md
    assert "`relu` seed 2" in md and ": failed: run FAILED" in md
    assert "`no SE` seed 2" in md and "pending: no run yet" in md
    assert csv.loc["relu", ["finished", "diverged", "failed", "pending"]].tolist() == [1, 1, 1, 0]
    assert csv.loc["no SE", "pending"] == 1


def test_ordering_against_the_paper_is_stated(report):
    _, md, _ = report
    # ours 12 < 14.25 < 14.5 < 20 against the paper's 22.28 < 23.00 < 23.30 < 23.47: one swap, ρ = 0.8
    assert ("- top-1: ours sigmoid < no SE < tanh < relu; paper sigmoid < tanh < no SE < relu. "
            "Spearman ρ = +0.80 over 4 levels: **mostly agrees**.") in md  # fmt: skip
    assert "- top-5: ours sigmoid < tanh < no SE < relu; paper sigmoid < tanh < no SE < relu." in md
    assert "**same order**" in md


def test_header_states_the_setting(report):
    _, md, _ = report
    lines = ["| dataset | synthetic", "| backbone | resnet20 |", "| epochs | 2 |", "| seeds | 0, 1, 2 |",
             "| device | cpu |", "| code version |", "9 finished, 1 diverged, 1 failed, 1 pending of 12"]  # fmt: skip
    for line in lines:
        assert line in md, line
    assert "Not drawn: no checkpoint for the reference model" in md


def test_csv_holds_the_same_numbers(report):
    _, _, csv = report
    s = summarize([12.0, 15.0, 16.5])
    assert csv.loc["tanh", "test_top1_err_mean"] == pytest.approx(14.5)
    assert csv.loc["tanh", "test_top1_err_ci_lo"] == pytest.approx(s.lo, abs=1e-4)
    assert csv.loc["tanh", "d_ref_test_top1_err_verdict"] == "worse"
    assert csv.loc["sigmoid", "reference"] and csv.loc["no SE", "baseline"]
    assert csv.loc["sigmoid", "params_m"] == pytest.approx(0.25)
    assert math.isnan(csv.loc["relu", "test_top1_err_std"])


def test_report_is_deterministic_and_logged_to_the_parent(store, report):
    path, results, tracker, parent = store
    readme, first, _ = report
    pngs = {p.name: p.read_bytes() for p in readme.parent.glob("*.png")}
    assert set(pngs) == {f"tiny_gate_{k}.png" for k in ("error", "tradeoff", "curves", "seeds")}
    assert all(b.startswith(PNG) for b in pngs.values())
    again = write_report(str(path), results=results, tracking_uri=None, out=readme.parent, overrides={})
    assert again.read_bytes() == first.encode()
    assert {p.name: p.read_bytes() for p in readme.parent.glob("*.png")} == pngs
    logged = {f.path for f in tracker.client.list_artifacts(parent, "report")}
    assert {"report/README.md", "report/summary.csv", "report/tiny_gate_error.png"} <= logged
    assert tracker.client.get_run(parent).info.status == "FAILED"  # the report does not touch the parent's status


def test_figures_have_the_expected_axes(report):
    readme, _, _ = report
    image = imread(readme.parent / "tiny_gate_error.png")
    assert image.ndim == 3 and image.shape[0] > 100
    s = [summarize([10.0, 12.0, 14.0]), summarize([20.0]), summarize([])]
    fig = figures.error_by_level(["a", "b", "c"], s, [22.28, None, 23.3], ylabel="test top-1 error %", title="t")
    ours, paper = fig.axes
    assert ours.get_ylabel() == "test top-1 error %" and paper.get_ylabel() == figures.PAPER_AXIS
    assert [t.get_text() for t in ours.get_xticklabels()] == ["a", "b", "c"]
    fig = figures.tradeoff(["a", "b", "c"], s, [0.2, 0.3, 0.4], [10.0, 11.0, 12.0], ylabel="err", title="t")
    assert [ax.get_xlabel() for ax in fig.axes] == ["params (M)", "train time per run (s)"]
    fig = figures.curves(["a", "b"], [[{1: 5.0, 2: 4.0}, {1: 6.0, 2: 3.0}], [{1: 7.0}]], ylabel="val", title="t")
    (ax,) = fig.axes
    assert len(ax.lines) == 2 and ax.get_xlabel() == "epoch" and len(ax.collections) == 1  # one band (n ≥ 2)
    assert list(ax.lines[0].get_ydata()) == [5.5, 3.5]


def test_paper_rows_match_levels_by_the_varied_se_key():
    spec = load_spec("stages")
    rows = [r for r in paper_rows() if r.table == "Table 13"]
    got = {t.label: paper_match(t.config, spec.varied_keys(), rows) for t in expand(spec)}
    assert {k: v.label for k, v in got.items()} == {
        "se.stages=[2]": "SE Stage 2", "se.stages=[3]": "SE Stage 3", "se.stages=[4]": "SE Stage 4",
        "se.stages=null": "SE All", "no SE": "ResNet-50",
    }  # fmt: skip


def test_user_errors_are_one_line(store, tmp_path):
    path, results, _, _ = store
    with pytest.raises(SenetError, match="'no_such_study' is not a study"):
        write_report("no_such_study", results=results, tracking_uri=None, out=tmp_path, overrides={})
    with pytest.raises(SenetError, match="no tracking store at"):
        write_report(str(path), results=tmp_path / "empty", tracking_uri=None, out=tmp_path, overrides={})
    with pytest.raises(SenetError, match="no runs of study 'tiny_gate'"):
        write_report(str(path), results=results, tracking_uri=None, out=tmp_path, overrides={"train.epochs": 3})


def test_report_draws_the_role_of_excitation_of_the_reference_model(store, tmp_path):
    """With the reference trial's checkpoint (trained for real), the report adds Figs. 6-7 and the specificity."""
    path, results, tracker, _ = store
    reference = next(t for t in expand(load_spec(path)) if t.label == "se.excitation=sigmoid" and t.seed == 0)
    checkpoints = tmp_path / "results"  # beside the store, so the other tests' report stays without excitation
    train(reference.config, checkpoints / "runs" / reference.key, log=lambda _: None)
    uri = tracker.uri
    out = tmp_path / "out"
    md = write_report(str(path), results=checkpoints, tracking_uri=uri, out=out, overrides={}).read_text()
    assert "Reference model `tiny_gate: se.excitation=sigmoid, seed 0`" in md
    assert "| SE_2_1 |" in md and "| SE_4_3 |" in md and "Specificity against depth: Spearman ρ =" in md
    for name in ("excitation_profiles.png", "excitation_spread.png", "excitation_specificity.png"):
        assert f"]({name})" in md and (out / name).read_bytes().startswith(PNG)

    runs = tracker.runs_frame("attributes.status = 'FINISHED'")
    run_id = runs[runs["tags.senet.trial_key"] == reference.key]["run_id"].item()
    again = excitation_report(run_id, results=checkpoints, tracking_uri=uri, out=tmp_path / "by_run", classes=[2],
                              overrides={})  # fmt: skip
    assert [p.name for p in again][:1] == ["excitation_profiles.png"]
    with pytest.raises(SenetError, match="neither a study"):
        excitation_report("f" * 32, results=checkpoints, tracking_uri=uri, out=tmp_path, classes=None, overrides={})


def test_table4_rows_match_by_backbone():
    spec = load_spec("cifar_table4")
    rows = [r for r in paper_rows() if r.table == "Table 4"]
    found = {
        (t.config.model.name, t.config.se.enabled): paper_match(t.config, spec.varied_keys(), rows)
        for t in expand(spec, {})
    }
    assert {k: (r.label, r.top1) for k, r in found.items()} == {
        ("resnet110", False): ("ResNet-110", 6.37),
        ("resnet110", True): ("SE-ResNet-110", 5.21),
        ("resnet164", False): ("ResNet-164", 5.46),
        ("resnet164", True): ("SE-ResNet-164", 4.39),
    }

"""`report` against a tiny MLflow store written the way workers write it: the aggregated numbers, the verdicts
and their families, the cells that did not finish, the ordering against the paper, the forest plot's data, the
LaTeX and CSV exports, byte-identical reruns, and logging to the parent run."""

import math
import os
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml
from matplotlib.image import imread
from scipy import stats

from ablations.errors import SenetError
from ablations.outcomes import Ending
from ablations.paper import paper_rows
from ablations.reporting import figures
from ablations.reporting.analysis import analyse
from ablations.reporting.excitation import excitation_report
from ablations.reporting.frames import forest_frame
from ablations.reporting.paper_match import paper_match
from ablations.reporting.power import power_at
from ablations.reporting.report import write_report
from ablations.reporting.results import gather
from ablations.reporting.stats import summarize, wilson
from ablations.study.load import load_spec
from ablations.study.trials import expand
from ablations.sweep.ledger import Ledger, Owner
from ablations.sweep.status import ReadOptions, study_status, ticket_of
from ablations.tracking import Tracker
from ablations.training.engine import train
from tests._support.configs import write_spec
from tests._support.stores import complete_as_of, local_ledger

STUDY = "tiny_gate"
GRID = {"se.excitation": ["sigmoid", "tanh", "relu"]}
EXTRA = [{"label": "no SE", "set": {"se.enabled": False}}]
# (test top-1, test top-5) per level and seed; None = no FINISHED run (see the store fixture for what happened)
RESULTS = {
    "sigmoid": {0: (10.0, 2.0), 1: (12.0, 3.0), 2: (14.0, 4.0)},
    "tanh": {0: (12.0, 3.0), 1: (15.0, 3.0), 2: (16.5, 6.0)},
    "relu": {0: (20.0, 7.0), 1: None, 2: None},  # seed 0 killed once then finished; 1 diverged; 2 failed
    "no SE": {0: (13.5, 4.0), 1: (15.0, 5.0), 2: None},  # seed 2 never ran
}
TAGS = {"senet.device": "cpu", "senet.torch": "2.0", "senet.git_sha": "0123456789abcdef", "senet.git_dirty": "false"}
PNG = b"\x89PNG\r\n\x1a\n"


def summary(top1, top5):
    return {"final_val_top1_err": top1 + 1, "final_val_top5_err": top5 + 1, "test_top1_err": top1,
            "test_top5_err": top5, "test_loss": 1.0, "best_val_top1_err": top1 - 5, "best_val_epoch": 1,
            "epochs": 2, "train_time_s": 30.0, "images_per_s": 1000.0, "peak_mem_mb": 100.0, "params": 250_000,
            "gflops": 0.01}  # fmt: skip


def start(tracker, parent, trial, attempt=1):
    info = {"key": trial.key, "config_hash": trial.config_hash, "seed": trial.seed, "label": trial.label,
            "factors": trial.factors, "attempt": attempt, "attempt_id": f"{trial.key}-{attempt}",
            "flat": trial.config.flat()}  # fmt: skip
    return tracker.start_trial(STUDY, parent, info, TAGS)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A results folder whose MLflow store holds the runs of RESULTS, made the way workers make them."""
    root = tmp_path_factory.mktemp("report")
    path = write_spec(root, STUDY, grid=GRID, extra=EXTRA, seeds=3)
    spec = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**spec, "mirrors": ["table12_excitation_operator"]}))
    results = root / "results"
    results.mkdir()
    tracker = Tracker(f"sqlite:///{results / 'mlflow.db'}", results)
    parent = tracker.make_parent(STUDY, spec["description"], {})
    tracker.finish_parent(parent, False)
    for trial in expand(load_spec(path)):
        label = trial.label.removeprefix("se.excitation=")
        value = RESULTS[label][trial.seed]
        attempt = 1
        if label == "relu" and trial.seed == 0:  # an attempt killed mid-run, with nonsense epoch metrics
            killed = start(tracker, parent, trial)
            tracker.log_epoch(killed, 1, {"val_top1_err": 99.0})
            tracker.end(killed, "KILLED", "stopped")
            attempt = 2
        if value is None and label == "relu" and trial.seed == 1:
            run = start(tracker, parent, trial)
            tracker.log_epoch(run, 1, {"val_top1_err": 60.0})
            tracker.log_summary(run, {"diverged_epoch": 2, "epochs": 1}, "diverged")
            tracker.end(run, "FINISHED")
        elif value is None and label == "relu":
            tracker.end(start(tracker, parent, trial), "FAILED", "crash")
        elif value is not None:
            run = start(tracker, parent, trial, attempt)
            for epoch in (1, 2):
                tracker.log_epoch(run, epoch, {"val_top1_err": value[0] + 10 / epoch, "val_top5_err": value[1]})
            tracker.log_summary(run, summary(*value), "finished")
            tracker.end(run, "FINISHED")
    return path, results, tracker, parent


@pytest.fixture(scope="module")
def report(store, tmp_path_factory):
    path, results, _, _ = store
    out = tmp_path_factory.mktemp("out")
    readme = write_report(load_spec(path), ReadOptions(results=results), out=out)
    return readme, readme.read_text(), pd.read_csv(out / "summary.csv").set_index("level")


def row_of(markdown: str, level: str, table: int = 0) -> list[str]:
    rows = [line for line in markdown.splitlines() if line.startswith(f"| {level} |")]
    return [c.strip() for c in rows[table].strip("|").split("|")]


def test_rows_hold_hand_computed_statistics_and_verdicts(report):
    _, md, _ = report
    # sigmoid 10, 12, 14: mean 12, std 2, t-interval 12 ± 4.303·2/√3 = [7.03, 16.97]
    sigmoid = row_of(md, "sigmoid")
    assert sigmoid[1:4] == ["3/3", "12.00 ± 2.00 [7.03, 16.97]", "*reference*"]
    # tanh − sigmoid: 2, 3, 2.5 → 2.5 ± 0.5 → [1.26, 3.74]; t = 8.66, 2 df: p = 0.0131 (alone, blocked: the paired t)
    tanh = row_of(md, "tanh")
    assert tanh[2:6] == ["14.50 ± 2.29 [8.81, 20.19]", "+2.50 [+1.26, +3.74] (n = 3)", "0.013", "**worse**"]
    # relu: one finished seed, no test
    relu = row_of(md, "relu")
    assert relu[1:6] == ["1/3 · 1 diverged · 1 failed", "20.00 (n = 1)", "+10.00 (n = 1)", "—", "no test (n < 2)"]
    # no SE − sigmoid over seeds 0, 1: 3.5, 3 → 3.25 ± 0.354, t(1) = 12.706 → [+0.07, +6.43], t = 13: p = 0.0489,
    # the SE-vs-no-SE contrast, tested once (†)
    no_se = row_of(md, "no SE")
    assert no_se[1:6] == ["2/3 · 1 pending", "14.25 (13.50, 15.00; n = 2)", "+3.25 [+0.07, +6.43] (n = 2)",
                          "0.049 †", "**worse**"]  # fmt: skip


def test_the_contrast_is_stated_once(report):
    _, md, _ = report
    assert md.count("## SE against no SE") == 1
    # one comparison, seeds 0 and 1 blocked (= the paired t-test); rules out: 3.25 + t(0.95, 1)·0.25 = 4.83
    assert row_of(md, "`no SE` − `sigmoid`") == ["`no SE` − `sigmoid`", "+3.25 [+0.07, +6.43] (n = 2)", "0.049",
                                                "0.049", "**worse**", "4.83",
                                                "randomised block (level + seed), df = 1"]  # fmt: skip
    assert "Dunnett's max-|t|" in md
    assert md.index("**What the data show**") < md.index("| setting | value |")  # estimates first
    said = "- SE against no SE: `no SE` is worse than `sigmoid`: Δ = +3.25 points [+0.07, +6.43]; one-sided 95% bounds"
    assert said in md


PAPER_TABLE = 2  # the level tables of a section: main, details, paper, every seed, cost


def test_paper_values_and_agreement_sit_in_their_own_table(report):
    _, md, csv = report
    # K = 3 classes: no top-5; agreement only where our verdict is resolved (tanh, no SE worse; the paper's Δ > 0)
    assert row_of(md, "tanh", PAPER_TABLE)[1:] == ["23.00 (Tanh)", "+0.72", "0.025", "worse", "agrees"]
    assert row_of(md, "relu", PAPER_TABLE)[1:] == ["23.47 (ReLU)", "+1.19", "—", "no test (n < 2)", "unresolved"]
    assert row_of(md, "no SE", PAPER_TABLE)[1:] == ["23.30 (ResNet-50, Table 10)", "+1.02", "0.071", "worse", "agrees"]
    assert row_of(md, "sigmoid", PAPER_TABLE)[1:] == ["22.28 (Sigmoid)", "*reference*", "", "*reference*", ""]
    assert "✓" not in md and "✗" not in md
    assert csv["paper_agreement"].fillna("").tolist() == ["", "agrees", "unresolved", "agrees"]


def test_setting_differences_are_listed_beside_the_paper(report):
    _, md, _ = report
    assert row_of(md, "dataset", 1) == ["dataset", "synthetic (K = 3 classes)", "ImageNet (K = 1000)"]
    assert row_of(md, "backbone", 1) == ["backbone", "ResNet-20", "ResNet-50"]
    # validation error 10 / epoch above the final: 2 epochs, the last one gains 5 points
    epochs = row_of(md, "epochs", 1)
    assert (
        epochs[1]
        == "2; curves still falling: the last epoch gained 5.00 points of validation top-1 error (mean over runs)"
    )
    assert epochs[2].startswith("~300; lr schedule: train until validation loss plateaus")
    # r = 4 (the tiny spec) on ResNet-20's 16/32/64 channels; the paper's Table 12 rows are r = 16 on SE-ResNet-50
    assert row_of(md, "SE hidden units per stage")[1:] == ["r = 4: 4 / 8 / 16 hidden units on 16 / 32 / 64 channels",
        "r = 16: 16 / 32 / 64 / 128 hidden units on 256 / 512 / 1024 / 2048 channels"]  # fmt: skip
    assert row_of(md, "FC biases")[1:] == ["on", "off (§6)"]
    assert row_of(md, "errors compared")[1].startswith("top-1 only (top-5 of K = 3 classes")


def test_no_top5_with_few_classes(report):
    _, md, _ = report
    body = md[md.index("## tiny_gate") : md.index("## How to read")]
    lines = [line for line in body.splitlines() if not line.startswith("| errors compared |")]  # says why not
    assert not any("top-5" in line for line in lines)
    assert "test NLL (nats)" in body and row_of(md, "tanh", 1)[3] == "1.000 (all 3 equal)"


def test_every_seed_and_its_paired_difference(report):
    readme, md, _ = report
    seeds = pd.read_csv(readme.parent / "seeds.csv")
    for label, per_seed in RESULTS.items():
        rows = seeds[seeds["level"] == label].set_index("seed")
        for seed, value in per_seed.items():
            if value is not None:
                assert rows.loc[seed, "test_top1_err"] == value[0] and rows.loc[seed, "test_loss"] == 1.0
            else:
                assert math.isnan(rows.loc[seed, "test_top1_err"])
    tanh = seeds[seeds["level"] == "tanh"].set_index("seed")
    assert tanh["d_ref_test_top1_err"].tolist() == [12.0 - 10.0, 15.0 - 12.0, 16.5 - 14.0]
    assert seeds.loc[(seeds["level"] == "relu") & (seeds["seed"] == 1), "state"].item() == "diverged"
    assert row_of(md, "tanh", 3) == ["tanh", "12.00", "15.00", "16.50"]
    assert row_of(md, "relu", 3) == ["relu", "20.00", "diverged", "failed"]
    assert row_of(md, "Δ tanh − sigmoid") == ["Δ tanh − sigmoid", "+2.00", "+3.00", "+2.50"]
    assert row_of(md, "Δ no SE − sigmoid") == ["Δ no SE − sigmoid", "+3.50", "+3.00", "—"]


def test_csv_floats_round_trip_exactly(report):
    readme, _, _ = report
    csv = pd.read_csv(readme.parent / "summary.csv").set_index("level")
    s = summarize([12.0, 15.0, 16.5])
    assert csv.loc["tanh", "test_top1_err_ci_lo"] == s.lo and csv.loc["tanh", "test_top1_err_std"] == s.std
    assert csv.loc["relu", "diverged_ci_lo"] == wilson(1, 2).lo


def test_the_legend_comes_after_the_tables(report):
    _, md, _ = report
    assert md.index("## tiny_gate") < md.index("## How to read") < md.index("**How to read.**")
    assert "<details>" in md and md.rstrip().endswith("</details>")
    assert md.index("| setting | value |") < md.index("## SE against no SE") < md.index("**How to read.**")


def test_equivalence_bounds_and_the_papers_delta_as_a_point_test(report):
    _, md, _ = report
    # tanh: rules out 2.5 + t(0.95, 2)·0.5/√3 = 3.34; the paper's +0.72: t = 1.78/0.289 = 6.17 on 2 df, p = 0.025
    assert row_of(md, "tanh")[6] == "3.34" and row_of(md, "relu")[6] == "—"
    assert row_of(md, "tanh", PAPER_TABLE)[1:4] == ["23.00 (Tanh)", "+0.72", "0.025"]
    assert row_of(md, "relu", PAPER_TABLE)[1:4] == ["23.47 (ReLU)", "+1.19", "—"]
    # no SE: (3.25 - 1.02) / 0.25 = 8.92 on 1 df: p = 0.071, not ruled out
    assert row_of(md, "no SE")[6] == "4.83"
    assert row_of(md, "no SE", PAPER_TABLE)[1:4] == ["23.30 (ResNet-50, Table 10)", "+1.02", "0.071"]
    assert "the paper's +0.72 is rejected (p = 0.025)" in md and "the paper's +1.02 is not ruled out (p = 0.071)" in md


def test_divergence_rate_and_the_mean_that_counts_it(report):
    _, md, csv = report
    # relu: 1 diverged of 2 results, Wilson [9.5, 90.5] %; at chance (3 classes: 66.67 %) the mean is 43.33
    relu = row_of(md, "relu", table=1)
    assert relu[1] == "1/2 [9, 91] %"
    assert relu[2] == "43.33 (20.00, 66.67; n = 2)"  # n = 2: the two values, not a t-interval 18 SDs wide
    assert row_of(md, "sigmoid", table=1)[1:3] == ["0/3 [0, 56] %", "12.00 ± 2.00 [7.03, 16.97]"]
    assert csv.loc["relu", "diverged_rate"] == 0.5
    assert csv.loc["relu", "diverged_ci_lo"] == pytest.approx(0.0945, abs=1e-4)
    assert csv.loc["relu", "test_top1_err_at_chance_mean"] == pytest.approx(43.3333, abs=1e-4)


def test_diverged_failed_killed_and_missing_cells_are_listed(report):
    _, md, csv = report
    assert "`relu` seed 1" in md and "diverged: diverged at epoch 2" in md
    assert "`relu` seed 2" in md and ": failed: run FAILED" in md
    assert "`no SE` seed 2" in md and "pending: no run yet" in md
    assert csv.loc["relu", ["finished", "diverged", "failed", "pending"]].tolist() == [1, 1, 1, 0]
    assert csv.loc["no SE", "pending"] == 1


def test_ordering_uses_the_design_levels_only(report):
    _, md, _ = report
    # sigmoid 12 < tanh 14.5 < relu 20 against 22.28 < 23.00 < 23.47; no SE left out; 3 levels: not testable
    assert (
        "- top-1: ours sigmoid < tanh < relu; paper sigmoid < tanh < relu (3 levels: no ordering test below 4)." in md
    )
    section = md[md.index("## tiny_gate") : md.index("## Role of excitation")]
    assert "Spearman ρ =" not in section and "- top-5:" not in section  # ρ only where testable; no top-5 at K = 3
    assert "**same order**" not in md and "mostly agrees" not in md


def test_power_line(report):
    _, md, csv = report
    # the table's family is tanh against sigmoid, blocked by seed: residual SD = SD(2, 3, 2.5)/√2 = 0.354 on 2 df,
    # chi-square interval 0.354·√(2/χ²) = [0.18, 2.22]; the critical |t| is Student's t(0.975, 2) = 4.303
    assert "Residual SD 0.35 points on 2 df (95% interval 0.18-2.22), randomised block (level + seed) model" in md
    assert "critical |t| = 4.303, one comparison detects |Δ| ≥ 1.63 points with 80% power (MDE)" in md
    t = pd.read_csv(report[0].parent / "tables.csv").iloc[0]
    se = t["resid_sd"] * math.sqrt(2 / 3)
    assert power_at(t["mde"] / se, 2, stats.t.isf(0.025, 2)) == pytest.approx(0.8, abs=1e-4)  # CSV precision

    # 0.5 point: blocked on 2 levels has n - 1 df; 10 seeds reach 80 %, 9 do not
    def reach(n, sd=t["resid_sd"]):
        return power_at(0.5 / (sd * math.sqrt(2 / n)), n - 1, stats.t.isf(0.025, n - 1))

    assert reach(10) >= 0.8 > reach(9)
    assert "0.5 point → 10 seeds (SD interval: 5-312); 1 point → 5 seeds (SD interval: 3-80)" in md
    assert reach(5, t["resid_sd_lo"]) >= 0.8 > reach(4, t["resid_sd_lo"]) and t["seeds_for_0.5_lo"] == 5


def test_header_states_the_setting(report):
    _, md, _ = report
    lines = ["| dataset | synthetic", "| backbone | resnet20 |", "| epochs | 2 |", "| seeds | 0, 1, 2 |",
             "| data seeds | 0 |", "| intervals cover | seed variance only", "| device | cpu |",
             "| code version | 0123456789ab |", "9 finished, 1 diverged, 1 failed, 1 pending of 12"]  # fmt: skip
    for line in lines:
        assert line in md, line
    assert "Earlier identity" not in md and "identity version" not in md  # no result under an earlier key
    assert "Not drawn: no finished run of the reference model" in md


def test_csv_holds_the_same_numbers(report):
    readme, _, csv = report
    s = summarize([12.0, 15.0, 16.5])
    assert csv.loc["tanh", "test_top1_err_mean"] == pytest.approx(14.5)
    assert csv.loc["tanh", "test_top1_err_ci_lo"] == pytest.approx(s.lo, abs=1e-4)
    assert csv.loc["tanh", "d_ref_verdict"] == "worse" and csv.loc["tanh", "d_ref_family"] == "table"
    assert csv.loc["tanh", "d_ref_p"] == pytest.approx(0.0130718, abs=1e-6)
    assert csv.loc["no SE", "d_ref_family"] == "SE vs no SE"
    assert csv.loc["sigmoid", "reference"] and csv.loc["no SE", "baseline"]
    assert csv.loc["sigmoid", "params_m"] == pytest.approx(0.25)
    assert math.isnan(csv.loc["relu", "test_top1_err_std"])
    tables = pd.read_csv(readme.parent / "tables.csv")
    assert tables.loc[0, "power_n"] == 3 and tables.loc[0, "seeds_for_0.5"] == 10
    assert tables.loc[0, "agree_test_top1_err_levels"] == "sigmoid tanh relu"


def test_latex_tables_are_booktabs(report):
    readme, _, _ = report
    tex = (readme.parent / "tables.tex").read_text()
    assert tex.count(r"\begin{table}") == 1 and r"\label{tab:tiny_gate}" in tex
    rules = [line for line in tex.splitlines() if line.endswith("rule")]
    assert rules == [r"\toprule", r"\midrule", r"\bottomrule"]
    assert (
        r"tanh & 3/3 & $14.50 \pm 2.29$ [8.81, 20.19] & +2.50 [+1.26, +3.74] & 0.013 & worse & 23.00 & +0.72 \\" in tex
    )
    # n = 2: the two values, as in the markdown, not a t-interval over 1 df ([4.72, 23.78])
    assert r"no SE & 2/3 & 14.25 (13.50, 15.00; $n=2$) & +3.25 [+0.07, +6.43] & 0.049$^\dagger$ & worse" in tex
    assert r"relu & 1/3 & 20.00 ($n=1$) & +10.00 ($n=1$) & -- & no test (n $<$ 2) & 23.47 & +1.19 \\" in tex
    assert r"tiny\_gate: se.excitation (paper Table 12)" in tex


def test_forest_plot_shows_every_level_and_the_paper_on_its_own_axis(store, report):
    path, results, tracker, _ = store
    spec = load_spec(path)
    trials, statuses = study_status(spec, ReadOptions(results=results))
    rows = forest_frame(analyse(gather(spec, statuses, tracker.trial_runs({t.key for t in trials}), tracker)))
    assert rows["level"].tolist() == ["sigmoid", "tanh", "relu", "no SE"]
    assert rows["reference"].tolist() == [True, False, False, False]
    assert rows["delta"].tolist()[1:] == pytest.approx([2.5, 10.0, 3.25]) and math.isnan(rows.loc[0, "delta"])
    assert rows["verdict"].tolist() == ["", "worse", "no test (n < 2)", "worse"]
    assert rows["paper_delta"].tolist()[1:] == pytest.approx([0.72, 1.19, 1.02])
    fig = figures.forest(rows, title="t")
    ours, paper = fig.axes
    assert [t.get_text() for t in ours.get_yticklabels()] == ["tiny_gate: sigmoid (reference)", "tiny_gate: tanh",
                                                              "tiny_gate: relu", "tiny_gate: no SE"]  # fmt: skip
    points = [line for line in ours.lines if line.get_marker() == "o"]
    assert [float(line.get_xdata()[0]) for line in points] == pytest.approx([2.5, 10.0, 3.25])
    (diamonds,) = [line for line in paper.lines if line.get_marker() == "D"]
    assert list(diamonds.get_xdata())[1:] == pytest.approx([0.72, 1.19, 1.02])
    # two panels side by side with their own x scales (no twin axis sharing one frame)
    assert ours.get_position().x1 < paper.get_position().x0 and paper.get_xlim() != ours.get_xlim()
    assert "paper" in paper.get_xlabel() and "ours" in ours.get_xlabel()
    png = report[0].parent / "overview_forest.png"
    assert png.read_bytes().startswith(PNG) and imread(png).ndim == 3


def test_report_is_deterministic_and_logged_to_the_parent(store, report):
    path, results, tracker, parent = store
    readme, first, _ = report
    out = readme.parent
    names = ("summary.csv", "tables.csv", "seeds.csv", "tables.tex")
    files = {n: (out / n).read_bytes() for n in names}
    pngs = {p.name: p.read_bytes() for p in out.glob("*.png")}
    assert set(pngs) == {"overview_forest.png", *(f"tiny_gate_{k}.png" for k in ("cost", "curves", "seeds"))}
    assert all(b.startswith(PNG) for b in pngs.values())
    again = write_report(load_spec(path), ReadOptions(results=results), out=out)
    assert again.read_bytes() == first.encode()
    assert {n: (out / n).read_bytes() for n in names} == files
    assert {p.name: p.read_bytes() for p in out.glob("*.png")} == pngs
    logged = {f.path for f in tracker.client.list_artifacts(parent, "report")}
    assert {"report/README.md", "report/summary.csv", "report/tables.tex", "report/overview_forest.png"} <= logged
    assert tracker.client.get_run(parent).info.status == "FAILED"  # the report does not touch the parent's status


@pytest.mark.usefixtures("default_cifar")
def test_paper_rows_match_levels_by_the_varied_se_key():
    spec = load_spec("stages")
    rows = [r for r in paper_rows() if r.table == "Table 13"]
    got = {t.label: paper_match(t.config, spec.varied_keys(), rows) for t in expand(spec)}
    assert {k: v.label for k, v in got.items()} == {
        "se.stages=[2]": "SE Stage 2", "se.stages=[3]": "SE Stage 3", "se.stages=[4]": "SE Stage 4",
        "se.stages=null": "SE All", "no SE": "ResNet-50",
    }  # fmt: skip


@pytest.mark.usefixtures("default_cifar")
def test_table4_rows_match_by_backbone():
    spec = load_spec("cifar_table4")
    rows = [r for r in paper_rows() if r.table == "Table 4"]
    found = {(t.config.model.name, t.config.se.enabled): paper_match(t.config, spec.varied_keys(), rows)
             for t in expand(spec, {})}  # fmt: skip
    assert {k: (r.label, r.top1) for k, r in found.items()} == {
        ("resnet110", False): ("ResNet-110", 6.37),
        ("resnet110", True): ("SE-ResNet-110", 5.21),
        ("resnet164", False): ("ResNet-164", 5.46),
        ("resnet164", True): ("SE-ResNet-164", 4.39),
    }


def test_user_errors_are_one_line(store, tmp_path):
    path, results, _, _ = store
    with pytest.raises(SenetError, match="'no_such_study' is not a study"):
        write_report(load_spec("no_such_study"), ReadOptions(results=results), out=tmp_path)
    with pytest.raises(SenetError, match="no tracking store at"):
        write_report(load_spec(path), ReadOptions(results=tmp_path / "empty"), out=tmp_path)
    with pytest.raises(SenetError, match="no runs of study 'tiny_gate'"):
        write_report(load_spec(path), ReadOptions(results=results, overrides={"train.epochs": 3}), out=tmp_path)


@pytest.mark.e2e  # 2,000 shuffles per block and seed: 15-40 s, kept out of make test's 10 minutes
def test_report_draws_the_role_of_excitation_of_the_reference_model(store, tmp_path):
    """With the reference trial's checkpoint (trained for real), the report adds Figs. 6-7, the ω² table and the
    depth trend."""
    path, results, tracker, _ = store
    reference = next(t for t in expand(load_spec(path)) if t.label == "se.excitation=sigmoid" and t.seed == 0)
    checkpoints = tmp_path / "results"  # beside the store, so the other tests' report stays without excitation
    train(reference.config, checkpoints / "runs" / reference.key, log=lambda _: None)
    opts = ReadOptions(results=checkpoints, tracking_uri=tracker.uri)
    out = tmp_path / "out"
    md = write_report(load_spec(path), opts, out=out).read_text()
    assert "Reference model `tiny_gate: se.excitation=sigmoid`, every finished seed: 1 (seed 0;" in md
    assert "the figures draw `tiny_gate: se.excitation=sigmoid, seed 0`" in md
    assert "| SE_2_1 |" in md and "| SE_4_3 |" in md and "**Depth trend.**" in md and "mean ρ = " in md
    assert "| SE_4_6 | the last block of the third residual stage | `SE_4_3` |" in md
    assert "| SE_5_2 | block 2 of 3 of the fourth residual stage | — | none: the network has no stage 5" in md
    for name in ("excitation_profiles.png", "excitation_spread.png", "excitation_eta2.png"):
        assert f"]({name})" in md and (out / name).read_bytes().startswith(PNG)
    run_id = next(r.run_id for r in tracker.trial_runs([reference.key]) if r.status == "FINISHED")
    again = excitation_report(run_id, opts, tmp_path / "by_run", [2])
    assert [p.name for p in again][:1] == ["excitation_profiles.png"]
    with pytest.raises(SenetError, match="neither a study"):
        excitation_report("f" * 32, opts, tmp_path, None)


def test_results_under_an_earlier_identity_are_named_and_never_mixed_in(tmp_path):
    """Keys changed with identity version 4: a result made under a version 3 key is in no table or mean; the header
    says such results exist and the cells name their earlier keys. Without any, the report is as it was."""
    path = write_spec(tmp_path, "earlier", grid={"se.excitation": ["sigmoid"]}, seeds=2)
    results = tmp_path / "results"
    results.mkdir()
    tracker = Tracker(f"sqlite:///{results / 'mlflow.db'}", results)
    parent = tracker.make_parent("earlier", "x", {})
    now, before = expand(load_spec(path))
    (old,) = complete_as_of(local_ledger(results), "earlier", [before], version=3, value=99.0)
    ledger = Ledger.open(local_ledger(results))
    ledger.enqueue(ticket_of(now))
    ledger.complete(ledger.claim({now.key}, Owner.me()), 10.0, Ending.FINISHED)
    for trial, top1 in ((now, 10.0), (old, 99.0)):  # both trained, as workers of their releases logged them
        run = start(tracker, parent, trial)
        tracker.log_summary(run, summary(top1, 1.0), "finished")
        tracker.end(run, "FINISHED")
    md = write_report(load_spec(path), ReadOptions(results=results), out=tmp_path / "out").read_text()
    assert row_of(md, "sigmoid")[1:3] == ["1/2 · 1 pending", "10.00 (n = 1)"]  # 99 is in no mean
    assert "**Earlier identity.** 1 of the 2 trials have a result only under a key made before trial identity " \
           "version 4" in md  # fmt: skip
    assert (f"- `sigmoid` seed 1 (`{before.key}`): pending: a result under identity version 3 (before common "
            f"random numbers), key {old.key}; `sweep` trains it under version 4") in md  # fmt: skip


def test_the_html_report_embeds_its_figures_and_whole_tables_and_is_logged(store, report):
    """MLflow's artifact viewer shows markdown as raw text: report.html beside it has the figures inside."""
    _, _, tracker, parent = store
    readme, text, _ = report
    page = (readme.parent / "report.html").read_text()
    tables = len(re.findall(r"^\|[\s:|-]+\|$", text, re.MULTILINE))  # a markdown table's rule under its header
    assert tables >= 2 and page.count("<table>") == tables
    assert '<div class="table-box"><table>' in page and "overflow-x: auto" in page
    figures_in_md = text.count("![")
    assert figures_in_md >= 4 and page.count('<img alt="') == figures_in_md
    assert page.count('src="data:image/png;base64,iVBORw0KGgo') == figures_in_md  # every one a PNG, inline
    assert "](" not in page and "![" not in page
    assert "report/report.html" in {f.path for f in tracker.client.list_artifacts(parent, "report")}


@pytest.mark.e2e
def test_the_html_report_renders_in_a_browser(report, tmp_path):
    """Chromium loads report.html: every image decodes, the widest table scrolls in its box (screenshot kept)."""
    from tests._support.browser import dom, screenshot

    readme, _, _ = report
    probe = tmp_path / "probe.html"  # the page, with a line of script that reports what the browser made of it
    script = ("<script>addEventListener('load', () => { const imgs = [...document.images]; document.body.dataset.ok ="
              " imgs.length + ':' + imgs.every(i => i.naturalWidth > 100) + ':' + document.querySelectorAll("
              "'.table-box table').length; });</script></body>")  # fmt: skip
    probe.write_text((readme.parent / "report.html").read_text().replace("</body>", script))
    shown = dom(probe.as_uri(), budget_ms=3000)
    n = readme.read_text().count("![")
    assert f'data-ok="{n}:true:' in shown
    screens = Path(os.environ.get("SENET_SCREENS", tmp_path))
    screenshot(
        (readme.parent / "report.html").as_uri(), screens / "report_html.png", budget_ms=3000, window="1400,5000"
    )

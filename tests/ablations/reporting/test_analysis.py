"""The report's families of comparisons, on a study of two tables that share their reference and no-SE levels:
one blocked model and Dunnett family per table (against statsmodels OLS), the SE-vs-no-SE contrast once per report,
and the ordering over the design levels only.
Runs are typed records made here (no MLflow), as `Tracker.trial_runs` returns them."""

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
import yaml
from statsmodels.stats.multitest import multipletests

from ablations.reporting.analysis import CONTRAST, TABLE, analyse
from ablations.reporting.design import BLOCKED
from ablations.reporting.markdown import render
from ablations.reporting.results import gather
from ablations.reporting.stats import paired
from ablations.study.load import load_spec
from ablations.study.trials import expand
from ablations.sweep.status import statuses
from ablations.tracking import TrialRun
from tests._support.configs import tiny_tree

REFERENCE = {"se.enabled": True, "se.excitation": "sigmoid", "se.reduction": 4}
NO_SE = [{"label": "no SE", "set": {"se.enabled": False}}]
# test top-1 error per level and seed: tanh and relu each reject alone (p = 0.0425, 0.0482), not after Holm
ERRORS = {
    "sigmoid": [10.0, 12.0, 14.0],
    "tanh": [11.3, 14.0, 16.8],
    "relu": [11.2, 14.1, 16.8],
    "8": [13.0, 15.5, 16.0],
    "no SE": [15.0, 16.0, 18.5],
}


class History:
    def history(self, run_id, metric):
        return {1: 50.0, 2: 40.0}


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    studies = {
        "gates": {"grid": {"se.excitation": ["sigmoid", "tanh", "relu"]}, "mirrors": ["table12_excitation_operator"]},
        "ratios": {"grid": {"se.reduction": [4, 8]}, "mirrors": ["table10_reduction_ratio"]},
    }
    for name, fields in studies.items():
        tree = {"name": name, "description": "t", "base": tiny_tree(), "extra": NO_SE, "seeds": 3,
                "reference": REFERENCE, **fields}  # fmt: skip
        (root / f"{name}.yaml").write_text(yaml.safe_dump(tree))
    top = root / "both.yaml"
    top.write_text(
        yaml.safe_dump({"name": "both", "description": "two tables", "include": ["gates.yaml", "ratios.yaml"]})
    )
    spec = load_spec(top)
    trials = expand(spec)
    runs = []
    for t in trials:
        label = t.labels[0].split("=")[-1]
        value = ERRORS[label][t.seed]
        runs.append(TrialRun(f"r{len(runs)}", t.key, t.seed, t.label, "FINISHED", "finished", 0, 1000,
                             {"test_top1_err": value, "test_top5_err": value / 4}, {}))  # fmt: skip
    analysis = analyse(gather(spec, statuses(trials, [], 1), runs, History()))
    return spec, trials, analysis


def test_shared_levels_are_trained_once(both):
    _, trials, analysis = both
    assert len(trials) == 5 * 3  # sigmoid r=4 (= r 4) and no SE are shared by the two tables
    assert [[r.level.label for r in t.rows] for t in analysis.tables] == [["sigmoid", "tanh", "relu", "no SE"],
                                                                          ["4", "8", "no SE"]]  # fmt: skip


def _ols(labels):
    """statsmodels' randomised-block fit of the given levels, sigmoid as the reference."""
    frame = pd.DataFrame([(lab, seed, e) for lab in labels for seed, e in enumerate(ERRORS[lab])],
                         columns=["level", "seed", "y"])  # fmt: skip
    return smf.ols("y ~ C(level, Treatment('sigmoid')) + C(seed)", frame).fit()


def test_one_model_per_table_without_the_contrast(both):
    _, _, analysis = both
    gates = analysis.tables[0]
    rows = {r.level.label: r for r in gates.rows}
    # paired t-tests with Holm would leave both inconclusive (0.0425, 0.0482 → 0.085 each)
    raw = [rows["tanh"].comparison.pair.p, rows["relu"].comparison.pair.p]
    assert raw == pytest.approx([0.042541, 0.048152], abs=1e-6)
    assert max(multipletests(raw, method="holm")[1]) > 0.05
    # the seeds share a large effect (10, 12, 14 and alike): the block is used, and the model pools its residual
    tanh, relu = rows["tanh"].comparison, rows["relu"].comparison
    assert tanh.fit is relu.fit and tanh.fit.model == BLOCKED and tanh.fit.seed_p < 0.25 and tanh.fit.df == 4
    ols = _ols(["sigmoid", "tanh", "relu"])
    for name, c in (("tanh", tanh), ("relu", relu)):
        term = f"C(level, Treatment('sigmoid'))[T.{name}]"
        assert c.estimate.estimate == pytest.approx(ols.params[term]) and c.estimate.se == pytest.approx(ols.bse[term])
        assert c.family == TABLE and c.verdict == "worse" and c.estimate.lo > 0
    assert tanh.p_adjusted < 0.05 and relu.p_adjusted < 0.05
    for name, c in (("tanh", tanh), ("relu", relu)):  # what pairing removes: Pearson's r with the reference
        assert c.correlation == pytest.approx(np.corrcoef(ERRORS[name], ERRORS["sigmoid"])[0, 1])
    ratios = {r.level.label: r for r in analysis.tables[1].rows}
    eight = ratios["8"].comparison.estimate  # alone in its table's family: Student's t, no adjustment
    assert eight.p_adjusted == pytest.approx(eight.p)


def test_the_contrast_is_tested_once_per_report(both):
    spec, _, analysis = both
    assert len(analysis.contrasts) == 1
    (base, ref, contrast) = analysis.contrasts[0]
    assert (base.label, ref.label) == ("no SE", "sigmoid")
    expected = paired(dict(enumerate(ERRORS["no SE"])), dict(enumerate(ERRORS["sigmoid"])))
    # one comparison in a blocked model on balanced seeds is the paired t-test
    assert contrast.fit.model == BLOCKED and contrast.pair.p == pytest.approx(expected.p)
    assert contrast.estimate.p == pytest.approx(expected.p) and contrast.p_adjusted == pytest.approx(expected.p)
    for table in analysis.tables:
        (row,) = [r for r in table.rows if r.level.label == "no SE"]
        assert row.comparison is contrast and row.comparison.family == CONTRAST
    md = render(spec, analysis, {}, {}, [])
    assert md.count("## SE against no SE") == 1 and md.count("| `no SE` − `sigmoid` |") == 1
    assert md.count("† |") == 2  # marked in both tables' no-SE rows
    assert md.count("- SE against no SE: `no SE` is worse than `sigmoid`") == 1  # the summary at the top


def test_ordering_and_power_use_the_tables_own_levels(both):
    _, _, analysis = both
    gates, ratios = analysis.tables
    levels, agreement = gates.agreement["test_top1_err"]
    assert [lv.label for lv in levels] == ["sigmoid", "tanh", "relu"]  # no SE left out of the design
    assert agreement.n == 3 and agreement.statement.startswith("not testable")
    assert [lv.label for lv in ratios.agreement["test_top1_err"][0]] == ["4", "8"]
    assert gates.power.n == 3 and gates.power.df == 4  # sigmoid, tanh and relu blocked: (3 - 1)·(3 - 1)

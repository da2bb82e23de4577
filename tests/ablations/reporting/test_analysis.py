"""The report's families of comparisons, on a study of two tables that share their reference and no-SE levels:
Holm within a table, the SE-vs-no-SE contrast once per report, and the ordering over the design levels only.
Runs are typed records made here (no MLflow), as `Tracker.trial_runs` returns them."""

import pytest
import yaml
from statsmodels.stats.multitest import multipletests

from ablations.reporting.analysis import CONTRAST, TABLE, analyse
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


def test_holm_runs_within_a_table_without_the_contrast(both):
    _, _, analysis = both
    gates = analysis.tables[0]
    rows = {r.level.label: r for r in gates.rows}
    raw = [rows["tanh"].comparison.pair.p, rows["relu"].comparison.pair.p]
    assert raw == pytest.approx([0.042541, 0.048152], abs=1e-6)
    expected = multipletests(raw, method="holm")[1]
    assert [rows["tanh"].comparison.p_adjusted, rows["relu"].comparison.p_adjusted] == pytest.approx(list(expected))
    assert {rows[k].comparison.family for k in ("tanh", "relu")} == {TABLE}
    # alone each would be "worse"; Holm over the two makes both inconclusive
    assert [rows[k].comparison.verdict for k in ("tanh", "relu")] == ["inconclusive", "inconclusive"]
    ratios = {r.level.label: r for r in analysis.tables[1].rows}
    eight = ratios["8"].comparison  # alone in its table's family: no adjustment
    assert eight.p_adjusted == pytest.approx(eight.pair.p) and eight.family == TABLE


def test_the_contrast_is_tested_once_per_report(both):
    spec, _, analysis = both
    assert len(analysis.contrasts) == 1
    (base, ref, contrast) = analysis.contrasts[0]
    assert (base.label, ref.label) == ("no SE", "sigmoid")
    expected = paired(dict(enumerate(ERRORS["no SE"])), dict(enumerate(ERRORS["sigmoid"])))
    assert contrast.pair.p == pytest.approx(expected.p) and contrast.p_adjusted == pytest.approx(expected.p)
    for table in analysis.tables:
        (row,) = [r for r in table.rows if r.level.label == "no SE"]
        assert row.comparison is contrast and row.comparison.family == CONTRAST
    md = render(spec, analysis, {}, {}, [])
    assert md.count("## SE against no SE") == 1 and md.count("| `no SE` − `sigmoid` |") == 1
    assert md.count("† |") == 2  # marked in both tables' no-SE rows


def test_ordering_and_power_use_the_tables_own_levels(both):
    _, _, analysis = both
    gates, ratios = analysis.tables
    levels, agreement = gates.agreement["test_top1_err"]
    assert [lv.label for lv in levels] == ["sigmoid", "tanh", "relu"]  # no SE left out of the design
    assert agreement.n == 3 and agreement.statement.startswith("not testable")
    assert [lv.label for lv in ratios.agreement["test_top1_err"][0]] == ["4", "8"]
    assert gates.power.n == 3 and gates.power.df == 6  # tanh, relu and no SE, 2 df each

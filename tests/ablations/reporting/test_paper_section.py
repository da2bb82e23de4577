"""The paper comparison's pure parts: agreement words only where our comparison is resolved, top-5 only with more
than 10 classes, Spearman's ρ only where testable, the SE bottleneck widths a config builds, and under what load
the training times were measured."""

import math
from types import SimpleNamespace

from ablations.config import build_config, unflatten
from ablations.outcomes import CellState, RunStatus
from ablations.paper import PaperRow
from ablations.reporting.analysis import Table
from ablations.reporting.paper_match import TOP1
from ablations.reporting.paper_section import AGREES, DISAGREES, UNRESOLVED, agreement, ordering_lines, paper_cell
from ablations.reporting.results import Cell, Level
from ablations.reporting.setting import _widths_text, last_gains, paper_setup, se_widths, top5_comparable
from ablations.reporting.stats import BETTER, IDENTICAL, INCONCLUSIVE, TOO_FEW, WORSE, rank_agreement
from ablations.reporting.timing import load_note, most_at_once, ms_per_image
from ablations.tracking import TrialRun


def config(**flat):
    return build_config(unflatten({"model.name": "resnet20", "data.dataset": "fashion_mnist", **flat}))


def run(seed, metrics, start=0, end=1000, host="h", tags=None):
    return TrialRun(f"r{seed}-{start}", f"k-s{seed}", seed, "x", RunStatus.FINISHED, "finished", start, end, metrics,
                    {"senet.host": host, **(tags or {})})  # fmt: skip


def level(label, values, paper=None, spans=None):
    cells = [Cell(SimpleNamespace(seed=s), CellState.FINISHED, run(s, {TOP1: v, "images_per_s": 500.0},
                                                                   *(spans or {}).get(s, (0, 1000))))
             for s, v in values.items()]  # fmt: skip
    return Level(label, config(), label, cells, paper=paper)


def test_agreement_only_where_the_comparison_is_resolved():
    assert agreement(WORSE, 0.72) == AGREES  # both higher error
    assert agreement(BETTER, -0.3) == AGREES
    assert agreement(BETTER, 0.72) == DISAGREES
    assert agreement(WORSE, 0.001) == DISAGREES  # the paper's Δ prints as 0: it finds no difference
    for verdict in (INCONCLUSIVE, TOO_FEW, IDENTICAL):  # an interval spanning 0, or no test: whatever the signs
        assert agreement(verdict, 0.72) == UNRESOLVED
    assert agreement(WORSE, math.nan) == ""


def test_top5_only_with_more_than_ten_classes():
    assert not top5_comparable(10) and top5_comparable(11) and top5_comparable(1000)
    lv = level("a", {0: 1.0}, PaperRow("Table 12", "Tanh", "se_resnet50", top1=23.0, top5=6.38))
    assert paper_cell(lv, top5=False) == "23.00 (Tanh)"
    assert paper_cell(lv, top5=True) == "23.00 / 6.38 (Tanh)"


def _table(levels, paper):
    agree = rank_agreement([lv.summary(TOP1).mean for lv in levels], paper)
    return Table(SimpleNamespace(), [], None, SimpleNamespace(), {TOP1: (levels, agree)})


def test_rho_is_printed_only_where_testable():
    errors = (22.0, 23.0, 24.0, 25.0)
    rows = [PaperRow("Table 12", n, "se_resnet50", top1=e) for n, e in zip("abcd", errors, strict=True)]
    three = [level(n, {0: v}, r) for n, v, r in zip("abc", (1.0, 2.0, 3.0), rows[:3], strict=True)]
    (line,) = ordering_lines(_table(three, [22.0, 23.0, 24.0]), top5=False)
    assert "ρ" not in line and line.endswith("(3 levels: no ordering test below 4).")
    four = [level(n, {0: v}, r) for n, v, r in zip("abcd", (1.0, 2.0, 3.0, 4.0), rows, strict=True)]
    (line,) = ordering_lines(_table(four, [22.0, 23.0, 24.0, 25.0]), top5=False)
    # 1 of the 24 orderings agrees as well: p = 1/24
    assert "Spearman ρ = +1.00 over 4 levels, exact one-sided permutation p = 0.042 (all 4! orderings)" in line


def test_se_widths_are_channels_over_r_per_stage():
    assert se_widths(config(**{"se.enabled": True})) == ((2, 16, 1), (3, 32, 2), (4, 64, 4))  # r = 16
    assert [h for _, _, h in se_widths(config(**{"se.enabled": True, "se.reduction": 8}))] == [2, 4, 8]
    assert se_widths(config(**{"se.enabled": False})) == ()
    per_stage = config(**{"se.enabled": True, "se.reduction": {2: 4, 3: 8, 4: "off"}})  # r per stage, stage 4 off
    assert se_widths(per_stage) == ((2, 16, 4), (3, 32, 4))
    assert (
        _widths_text(per_stage.se.reduction, se_widths(per_stage))
        == "r = 4 / 8: 4 / 4 hidden units on 16 / 32 channels"
    )
    assert paper_setup(["Table 12"])["fc_bias"] is False and paper_setup(["Table 4"])["epochs"] is None


def test_last_epoch_gains_from_the_curves():
    lv = level("a", {0: 1.0})
    lv.curves = [{1: 20.0, 2: 12.0, 3: 11.0}, {1: 22.0, 2: 13.0, 3: 11.5}]
    assert last_gains([lv]) == (1.25, 8.5)


def test_training_times_say_when_runs_shared_the_host():
    alone = level("a", {0: 1.0, 1: 2.0}, spans={0: (0, 100), 1: (100, 200)})
    assert most_at_once([alone]) == (1, "h") and load_note([alone]).startswith("no two of these runs overlapped")
    assert ms_per_image(alone) == 2.0
    shared = level("b", {0: 1.0, 1: 2.0, 2: 3.0}, spans={0: (0, 100), 1: (50, 150), 2: (60, 70)})
    assert most_at_once([shared]) == (3, "h")
    assert load_note([shared]) == ("measured under load: up to 3 runs trained at once on h; their threads and the "
                                   "host's cores are not recorded")  # fmt: skip

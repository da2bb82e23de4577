"""Which published row of the paper (Hu et al., Tables 4 and 10-16) describes a level of one of our tables."""

from __future__ import annotations

import re
from typing import Any

from ablations.config import RunConfig
from ablations.paper import PaperRow, paper_rows
from ablations.study.spec import STANDARD_SE, StudySpec
from senet_core import model_info

ABLATION_TABLES = tuple(f"Table {n}" for n in range(10, 17))  # the §6 ablations share one recipe and baseline
TOP1, TOP5 = "test_top1_err", "test_top5_err"


def table_names(study: StudySpec) -> list[str]:
    """`table12_excitation_operator` → "Table 12"."""
    return [f"Table {m.group(1)}" for key in study.mirrors if (m := re.match(r"table(\d+)_", key))]


def paper_value(row: PaperRow | None, metric: str) -> float | None:
    """The row's published error for one of our metrics (None when not published)."""
    if row is None:
        return None
    return {TOP1: row.top1, TOP5: row.top5}.get(metric)


def published(tables: list[str]) -> list[PaperRow]:
    """The rows of `tables`, with the ablations' no-SE row (ResNet-50, 23.30 / 6.55) borrowed from Table 10 when
    the tables print SE rows only (Tables 11, 12, 14, 15)."""
    rows = [r for r in paper_rows() if r.table in tables]
    if rows and all(r.model.startswith("se_") for r in rows):
        base = next((r for r in paper_rows() if r.table in ABLATION_TABLES and not r.model.startswith("se_")), None)
        if base is not None:
            rows.append(base)
    return rows


def _same_stages(stages: Any, model: str) -> tuple[int, ...] | None:
    """Stages as a tuple, None for "every stage of the backbone" however it was spelled."""
    if stages is None:
        return None
    info = model_info(model.removeprefix("se_"))
    return None if tuple(sorted(stages)) == tuple(info.stages) else tuple(sorted(stages))


def paper_match(config: RunConfig, varied: set[str], rows: list[PaperRow]) -> PaperRow | None:
    """The published row describing the same SE design as `config` in the keys the study varies.

    The paper's no-SE rows (plain ResNet-50) match a configuration without SE; an SE row matches when every SE
    key the study varies equals the row's setting (the paper's standard SE for keys the row leaves alone). The
    backbone, dataset and FC bias are not compared: the paper's rows are ImageNet ResNet-50s.
    """
    se_keys = {k for k in varied if k != "se.enabled"}
    if "model.name" in varied:  # Table 4: backbones with and without SE, matched by name
        if se_keys - {"model.name"}:
            return None
        return next((r for r in rows if r.model.removeprefix("se_") == config.model.name
                     and r.model.startswith("se_") == config.se.enabled), None)  # fmt: skip
    if not se_keys <= set(STANDARD_SE):
        return None  # the study varies something the paper's ablation tables do not (a backbone, a recipe)
    flat = config.flat()
    for row in rows:
        if not row.model.startswith("se_"):
            if not config.se.enabled:
                return row
            continue
        if not config.se.enabled:
            continue
        settings = {**STANDARD_SE, **row.options}
        ours = {k: flat[k] for k in se_keys}
        theirs = {k: settings[k] for k in se_keys}
        if "se.stages" in se_keys:
            ours["se.stages"] = _same_stages(ours["se.stages"], config.model.name)
            theirs["se.stages"] = _same_stages(theirs["se.stages"], row.model)
        if ours == theirs:
            return row
    return None


# The blocks the paper's Figs. 6-7 draw (§7.2): the last unit of stages 2-4 and the three units of stage 5 of
# SE-ResNet-50, whose stages 2-5 hold 3, 4, 6 and 3 units.
PAPER_BLOCKS = {"SE_2_3": (2, 3), "SE_3_4": (3, 4), "SE_4_6": (4, 6), "SE_5_1": (5, 1), "SE_5_2": (5, 2),
                "SE_5_3": (5, 3)}  # fmt: skip
PAPER_UNITS = {2: 3, 3: 4, 4: 6, 5: 3}
_ORDINAL = ("first", "second", "third", "fourth", "fifth", "sixth")


def _where(stage: int, index: int, units: dict[int, int]) -> str:
    """E.g. "the last block of the third residual stage" (stages numbered as ResNet's conv2_x … conv5_x)."""
    nth = _ORDINAL[stage - 2] if 0 <= stage - 2 < len(_ORDINAL) else f"stage-{stage}"
    block = "the last block" if index == units[stage] else f"block {index} of {units[stage]}"
    return f"{block} of the {nth} residual stage"


def paper_blocks(positions: dict[str, tuple[int, int]]) -> list[tuple[str, str, str | None, str]]:
    """The paper's Figs. 6-7 blocks mapped to the analysed network's, by stage number (stage 2 is the first
    residual stage in both).

    Args:
        positions: our SE block name → (stage, 1-based index in the stage).

    Returns:
        (paper block, where it sits in SE-ResNet-50, our block or None, where ours sits or why there is none).
        A last-unit block maps to the last block of our stage; a stage-5 unit to the unit with its index.
    """
    units: dict[int, int] = {}
    names: dict[tuple[int, int], str] = {}
    for name, (stage, index) in positions.items():
        units[stage] = max(units.get(stage, 0), index)
        names[(stage, index)] = name
    out: list[tuple[str, str, str | None, str]] = []
    for paper, (stage, index) in PAPER_BLOCKS.items():
        theirs = _where(stage, index, PAPER_UNITS)
        if stage not in units:
            have = ", ".join(map(str, sorted(units)))
            out.append((paper, theirs, None, f"none: the network has no stage {stage} (its SE stages: {have})"))
            continue
        ours = units[stage] if index == PAPER_UNITS[stage] else index
        if ours > units[stage]:
            out.append((paper, theirs, None, f"none: stage {stage} has {units[stage]} blocks"))
            continue
        out.append((paper, theirs, names[(stage, ours)], _where(stage, ours, units)))
    return out

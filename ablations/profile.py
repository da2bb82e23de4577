"""`senet-ablate profile`: params and GFLOPs of any configuration, with the paper's figure beside ours, as rows and
as the table the command prints."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ablations.costs import network_cost
from ablations.paper import PaperRow, complexity_rows, find_rows

if TYPE_CHECKING:
    from rich.table import Table


@dataclass(frozen=True)
class ProfileRow:
    """Our measurement of one configuration and, where published, the paper's."""

    model: str
    options: dict[str, Any]
    input_size: int
    params: int
    gflops: float
    paper: PaperRow | None = None

    @property
    def params_ok(self) -> bool | None:
        """Within ±0.1M of the paper at the paper's precision (0.1M), None when unpublished."""
        if self.paper is None or self.paper.params_m is None:
            return None
        return abs(round(self.params / 1e6, 1) - self.paper.params_m) <= 0.1 + 1e-9

    @property
    def gflops_ok(self) -> bool | None:
        """Equal to the paper's figure at the paper's precision, None when unpublished."""
        if self.paper is None or self.paper.gflops is None:
            return None
        decimals = 3 if self.paper.gflops < 1 else 2
        return round(self.gflops, decimals) == round(self.paper.gflops, decimals)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model,
            "options": self.options,
            "input_size": self.input_size,
            "params": self.params,
            "gflops": round(self.gflops, 4),
        }
        if self.paper is not None:
            out |= {
                "paper_table": self.paper.table,
                "paper_row": self.paper.label,
                "paper_params_m": self.paper.params_m,
                "paper_gflops": self.paper.gflops,
                "params_match": self.params_ok,
                "gflops_match": self.gflops_ok,
            }
        return out


def profile(model: str, options: dict[str, Any] | None = None, input_size: int = 224) -> list[ProfileRow]:
    """Measure one configuration; one row per published table that has it (one row if none has)."""
    options = dict(options or {})
    c = network_cost(model, options, input_size)
    params, gflops = c.params, c.gflops
    papers = find_rows(model, options) if input_size == 224 else []
    papers = [p for p in papers if p.params_m is not None or p.gflops is not None]
    return [ProfileRow(model, options, input_size, params, gflops, p) for p in papers] or [
        ProfileRow(model, options, input_size, params, gflops)
    ]


def profile_paper() -> list[ProfileRow]:
    """Every published params/GFLOPs figure of Tables 2, 3, 10, 13, 15 and 16 next to our measurement."""
    rows = []
    for paper in complexity_rows():
        c = network_cost(paper.model, paper.options, 224)
        rows.append(ProfileRow(paper.model, paper.options, 224, c.params, c.gflops, paper))
    return rows


COLUMNS = ("table", "row", "model", "options", "params", "params (M)", "paper (M)", "", "GFLOPs", "paper", "")
LEFT = ("table", "row", "model", "options")


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _mark(ok: bool | None) -> str:
    return {None: "", True: "✓", False: "✗"}[ok]


def table(rows: list[ProfileRow]) -> Table:
    """Our params and GFLOPs beside the paper's, with a ✓ or ✗ where the paper has the figure."""
    from rich.table import Table

    out = Table(title=f"Complexity at {rows[0].input_size}×{rows[0].input_size} (GFLOPs = multiply-adds / 1e9)")
    for col in COLUMNS:
        out.add_column(col, justify="left" if col in LEFT else "right")
    for r in rows:
        p = r.paper
        opts = " ".join(f"{k}={v}" for k, v in r.options.items())
        out.add_row(
            p.table if p else "",
            p.label if p else "",
            r.model,
            opts,
            f"{r.params:,}",
            f"{r.params / 1e6:.2f}",
            _fmt(p.params_m if p else None, ".1f"),
            _mark(r.params_ok),
            f"{r.gflops:.3f}",
            _fmt(p.gflops if p else None, ".3f" if p and p.gflops and p.gflops < 1 else ".2f"),
            _mark(r.gflops_ok),
        )
    return out


def reproduced(rows: list[ProfileRow]) -> str:
    """How many of the rows' published figures we reproduce, in one line."""
    checked = [ok for r in rows for ok in (r.params_ok, r.gflops_ok) if ok is not None]
    rule = "params within ±0.1M, GFLOPs equal at the paper's digits"
    return f"{sum(checked)} of {len(checked)} published figures reproduced ({rule})"


def print_rows(rows: list[ProfileRow], paper: bool) -> None:
    """The table on stdout; for the paper's rows (`--paper`), the line of figures reproduced after it."""
    from rich.console import Console

    Console(width=200).print(table(rows))
    if paper:
        print(reproduced(rows))

"""A sweep's levels, reference and seed overrides are recorded with it, and whoever joins or reads it back (a
`worker`, `status`, `report`) plans the same trials from them (an in-process ledger; nothing trains)."""

from __future__ import annotations

from ablations.cli import _as_swept, main
from ablations.cli.sweep import study_overrides
from ablations.config import Host
from ablations.study.load import load_spec
from ablations.study.trials import plan_trials
from ablations.sweep.ledger import Ledger
from ablations.sweep.start import SweepOptions, as_joined, record
from ablations.sweep.status import ReadOptions, study_status
from tests._support.configs import write_spec
from tests._support.stores import local_ledger

CPU = Host("cpu")


def test_a_joiner_and_the_read_side_plan_the_trials_the_sweep_recorded(tmp_path, capsys):
    path, results = write_spec(tmp_path), tmp_path / "results"
    spec = load_spec(path)
    overrides = study_overrides(["train.epochs=1"], ["se.reduction=4,16", "seeds=1"])
    swept = plan_trials(spec, overrides, CPU)
    assert len(swept) == 4  # the gate (sigmoid, tanh) x reduction (4, 16) x seed 0
    results.mkdir()
    record(Ledger.open(local_ledger(results)), spec, swept, CPU, overrides)

    joined, host = as_joined(spec, SweepOptions(results=results), CPU)  # a `worker` given no overrides
    assert joined.overrides == overrides and host == CPU
    assert [t.key for t in plan_trials(spec, joined.overrides, host)] == [t.key for t in swept]
    read, _ = study_status(spec, ReadOptions(results=results))  # `status`, `report`, `retry`
    assert [t.key for t in read] == [t.key for t in swept]
    assert _as_swept(spec, ReadOptions(results=results)).grid == {"se.excitation": ["sigmoid", "tanh"],
                                                                   "se.reduction": [4, 16]}  # fmt: skip

    assert main(["status", str(path), "--results", str(results)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.split()[0] == "pending" for line in lines if line.startswith("  ")) == 4
    assert any("se.excitation=tanh, se.reduction=16 seed 0" in line for line in lines)
    given = ReadOptions(results=results, overrides=study_overrides([], ["seeds=2"]))  # given ones win
    assert len(study_status(spec, given)[0]) == 2 * 2

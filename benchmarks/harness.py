"""The harness's own cost: a study through `senet-ablate sweep` against the same trials in one bare engine loop.

Both sides run as fresh processes on the same machine in one run, in ABBA order over the rounds, each timed from
launch to exit (interpreter start, imports and data included): the sweep with its default single warm worker (ledger,
MLflow, checkpoints, progress), the bare loop calling `ablations.training.engine.train` on each trial's
configuration with nothing else. The ratio sweep / bare is the harness's overhead on the whole study; the fixed
cost per trial after a slot's first trial is read from the sweep's own records: for consecutive trials of one
worker, the time between their ends minus the engine's time for the later one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ablations.paths import with_python_path
from benchmarks._report import Check, Result, verdict
from benchmarks._timing import Summary

RATIO_TARGET = {"cpu": 1.03, "cuda": 1.05}  # sweep / bare loop wall time, engine time equalised
ROUNDS = 2  # sweep and bare loop each, in ABBA order
FIXED_TARGET_S = 1.0  # seconds of harness work per trial, after a slot's first trial
ROOT = Path(__file__).resolve().parent.parent

BARE = """
import json, sys, time
from ablations.study.load import load_spec
from ablations.study.trials import expand
from ablations.training.engine import train
trials = expand(load_spec(sys.argv[1]), json.loads(sys.argv[2]))
engine = []
for t in trials:
    began = time.perf_counter()
    train(t.config, None, log=lambda _: None)
    engine.append(time.perf_counter() - began)
print(json.dumps({"trials": len(trials), "engine_s": engine}))
"""


def _timed(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, str]:
    began = time.perf_counter()
    out = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - began
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed ({out.returncode}): {out.stderr.strip()[-500:]}")
    return wall, out.stdout


def finished_runs(results: Path) -> list:
    """The MLflow runs of the sweep's finished trials, each with its `engine_s` metric (the engine's own time)."""
    from ablations.paths import mlflow_db
    from ablations.tracking import Tracker

    return Tracker(f"sqlite:///{mlflow_db(results)}", results).trial_runs(status="FINISHED")


def fixed_costs(results: Path, runs: list) -> list[float]:
    """Seconds of harness work per trial after each worker's first: the gap between the ends of consecutive trials
    of one worker, minus the engine's time for the later trial (claim, MLflow run, checkpoints, result, ledger)."""
    from ablations.paths import ledger_file
    from ablations.sweep.ledger import Ledger
    from ablations.tracking import Tag

    attempts = {str(a.trial_id): a for a in Ledger.open(str(ledger_file(results))).attempts()}
    by_worker: dict[int, list] = {}
    for run in runs:
        owner = attempts[run.tags[Tag.ATTEMPT_ID]].owner
        by_worker.setdefault(owner.pid if owner else 0, []).append(run)
    costs = []
    for worker_runs in by_worker.values():
        worker_runs.sort(key=lambda r: r.end_ms or 0)
        for before, run in zip(worker_runs, worker_runs[1:], strict=False):
            costs.append(((run.end_ms or 0) - (before.end_ms or 0)) / 1000 - run.metrics["engine_s"])
    return costs


def child_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment of both sides: this checkout first on PYTHONPATH (a host's own entries kept after it), no
    tracking store or ledger of the caller's."""
    env = {k: v for k, v in environ.items() if k not in ("MLFLOW_TRACKING_URI", "SENET_ABLATE_STORAGE")}
    return with_python_path(env, ROOT)


def _sweep_round(study: str, sets: list[str], env: dict[str, str], log: Callable[[str], None]) -> dict[str, Any]:
    """One sweep of `study` in a fresh results folder: wall time, engine time, fixed costs per trial."""
    with tempfile.TemporaryDirectory(prefix="senet-harness-") as tmp:
        folder = Path(tmp)
        log(f"  sweep: senet-ablate sweep {study} {' '.join(sets)}")
        wall, _ = _timed([sys.executable, "-m", "ablations.cli", "sweep", study, "--results", str(folder / "r"),
                          "--no-progress", *sets], env, folder)  # fmt: skip
        runs = finished_runs(folder / "r")
        return {"wall": wall, "engine": sum(run.metrics["engine_s"] for run in runs),
                "fixed": fixed_costs(folder / "r", runs)}  # fmt: skip


def _bare_round(study: str, overrides: dict[str, object], env: dict[str, str], log: Callable[[str], None]) -> dict:
    """The same trials in one bare engine process: wall time, engine time, trial count."""
    log("  bare loop over the engine")
    with tempfile.TemporaryDirectory(prefix="senet-harness-") as tmp:
        wall, out = _timed([sys.executable, "-c", BARE, study, json.dumps(overrides)], env, Path(tmp))
    bare = json.loads(out.strip().splitlines()[-1])
    return {"wall": wall, "engine": sum(bare["engine_s"]), "trials": bare["trials"]}


def harness_overhead(
    study: str, overrides: dict[str, object], device: str, log: Callable[[str], None], rounds: int = ROUNDS
) -> Result:
    """Wall time of `study` through the sweep and through a bare loop over the engine, `rounds` times in ABBA order
    (sweep, bare, bare, sweep, ...: a drift of the machine over the run weighs on both sides alike); the fixed
    cost per trial."""
    env = child_env(os.environ)
    sets = [a for k, v in overrides.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    sweeps, bares = [], []
    for r in range(rounds):
        log(f"  round {r + 1}/{rounds}")
        order = ("sweep", "bare") if r % 2 == 0 else ("bare", "sweep")
        for side in order:
            if side == "sweep":
                sweeps.append(_sweep_round(study, sets, env, log))
            else:
                bares.append(_bare_round(study, overrides, env, log))
    # The same trainings drift by several % between two runs minutes apart on a shared machine; the harness's
    # own cost is what each side spends outside the engine, so the judged ratio puts the bare loop's engine time
    # on both sides. The raw ratio and the engine ratio stay in the table.
    wall = Summary.of([s["wall"] / b["wall"] for s, b in zip(sweeps, bares, strict=True)])
    equalised = Summary.of(
        [(s["wall"] - s["engine"] + b["engine"]) / b["wall"] for s, b in zip(sweeps, bares, strict=True)]
    )
    engine = Summary.of([s["engine"] / b["engine"] for s, b in zip(sweeps, bares, strict=True)])
    costs = [c for s in sweeps for c in s["fixed"]]
    fixed = Summary.of(costs) if len(costs) > 1 else None

    def side(runs: list[dict[str, Any]]) -> str:
        total, inner = Summary.of([x["wall"] for x in runs]), Summary.of([x["engine"] for x in runs])
        outside = Summary.of([x["wall"] - x["engine"] for x in runs])
        return f"{total.format(1, ' s')} (engine {inner.format(1, ' s')}, outside it {outside.format(1, ' s')})"

    result = Result(
        f"Harness overhead: study `{study}` through the sweep / the same trials in a bare engine loop",
        [
            f"{bares[0]['trials']} trials on {device}; both sides fresh processes timed from launch to exit; "
            f"{rounds} rounds in ABBA order (sweep, bare, bare, sweep, ...)",
            "sweep: `senet-ablate sweep` with its defaults (one warm worker: ledger, MLflow, checkpoints, result); "
            "bare: one process calling `engine.train(config)` per trial, nothing recorded",
            "fixed cost per trial: for consecutive trials of one worker, (end - previous end) - engine time",
            "engine time equalised: (sweep wall - sweep engine + bare engine) / bare wall, the harness's cost without "
            "the machine's drift between the two runs (the same trainings, minutes apart); its mean over the rounds "
            "is judged against the target",
        ],
        [
            ("sweep wall time", side(sweeps)),
            ("bare loop wall time", side(bares)),
            ("engine time sweep / bare (the same trainings)", engine.format(3)),
            ("ratio sweep / bare, wall", wall.format(3)),
            ("ratio sweep / bare, engine time equalised", equalised.format(3)),
            ("fixed cost per trial after a slot's first", fixed.format(2, " s") if fixed else "—"),
        ],
    )
    target = RATIO_TARGET[device]
    result.checks.append(Check(f"harness / bare loop wall time, engine time equalised, ≤ {target} ({device})",
                               f"{equalised.format(3)} (wall {wall.format(3)})",
                               verdict(equalised.mean <= target)))  # fmt: skip
    result.checks.append(
        Check(
            f"harness fixed cost per trial after a slot's first ≤ {FIXED_TARGET_S:.0f} s",
            fixed.format(2, " s") if fixed else "—",
            verdict(fixed.mean <= FIXED_TARGET_S) if fixed else "not measured — fewer than two trials per worker",
        )
    )
    return result

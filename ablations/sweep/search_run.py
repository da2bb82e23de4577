"""`senet-ablate search NAME`: the search's designs trained by the sweep machinery. Each batch of designs the loop
asks for becomes a one-level sweep of the study (the batch's designs at its seeds), so its trials go through the
ledger exactly once, with warm workers, MLflow runs and resume like any sweep's; a design whose trials already have
results (from this search, another one or a grid in the same results folder) is read back, not trained, and the
feasible designs a grid trained at every common seed start the sampler. Last, the re-evaluation: the arms'
search-time fronts and the references retrained at full length on fresh seeds the sampler never saw."""

from __future__ import annotations

import math
from collections.abc import Callable

from ablations.config import Host
from ablations.errors import SenetError
from ablations.outcomes import Ending, Standing
from ablations.study.search import VALIDATION
from ablations.study.search_plan import Design, plan_designs
from ablations.study.searched import SEARCH_DB, as_sweep, record_reevaluated, reevaluated, to_reevaluate
from ablations.study.spec import Extra, StudySpec
from ablations.sweep.runner import run
from ablations.sweep.search_loop import DEVICE_S, ArmResult, Evaluate, Latency, Seeded, needs_latency, run_search
from ablations.sweep.slurm import SlurmOptions
from ablations.sweep.start import SweepOptions
from ablations.sweep.status import ReadOptions, TrialStatus, study_status


def seeded_of(design: Design, statuses: list[TrialStatus]) -> Seeded:
    """A design's validation metrics per seed that gave a result, read from its trials' statuses; a diverged seed's
    top-1/top-5 error counts at chance (its loss has no value: such a design gives no loss objective)."""
    chance = 100 * (1 - 1 / design.num_classes)
    digest = design.config.config_hash()  # a design equal to another as a network shares its trials, not its label
    out: Seeded = {}
    for s in statuses:
        if s.state != Standing.DONE or (design.label not in s.trial.labels and s.trial.config_hash != digest):
            continue
        metrics = {DEVICE_S: float(s.duration_s or 0.0)}
        for name in VALIDATION:
            value = s.summary.get(name)
            if s.outcome == Ending.DIVERGED:
                value = chance if name.endswith("_err") else None
            if value is not None and math.isfinite(value):
                metrics[name] = float(value)
        out[s.trial.seed] = metrics
    return out


Train = Callable[[StudySpec], tuple[int, list[TrialStatus]]]  # a sweep run to its end: local workers or Slurm tasks


def trainer(opts: SweepOptions, slurm: SlurmOptions | None = None) -> Train:
    """How the search's sweeps train: on this host's workers, or (`slurm`) as job arrays this controller submits
    and follows, batch by batch (each task trains what waits, as `searched` lists it, and leaves)."""
    if slurm is None:
        return lambda sweep: run(sweep, opts)
    from ablations.sweep.launch import launch

    return lambda sweep: launch(sweep, opts, slurm)


def sweep_evaluator(spec: StudySpec, train: Train) -> Evaluate:
    """Evaluate a batch of designs as one sweep of them at the seeds (their trials in flight together)."""

    def evaluate(designs: list[Design], seeds: list[int]) -> list[Seeded]:
        if not designs:
            return []
        _, statuses = train(as_sweep(spec, [Extra(label=d.label, set=d.settings) for d in designs], seeds))
        return [seeded_of(d, statuses) for d in designs]

    return evaluate


def grid_results(spec: StudySpec, opts: SweepOptions) -> list[tuple[Design, Seeded]]:
    """The feasible designs of the space (`plan_designs`' sample of a large one) that some study in the results
    folder trained at every common seed: what warm-starts the sampler."""
    assert spec.search is not None
    designs, _ = plan_designs(spec, Host.here())
    feasible = [d for d in designs if d.feasible]
    if not feasible:
        return []
    read = ReadOptions(results=opts.results, storage=opts.storage, tracking_uri=opts.tracking_uri, overrides={},
                       max_retries=opts.max_retries)  # fmt: skip
    _, statuses = study_status(as_sweep(spec, [Extra(label=d.label, set=d.settings) for d in feasible],
                                        spec.search.seeds), read)  # fmt: skip
    out = []
    for d in feasible:
        seeded = seeded_of(d, statuses)
        if set(seeded) >= set(spec.search.seeds):
            out.append((d, seeded))
    return out


def latency_probe(spec: StudySpec, opts: SweepOptions) -> Latency | None:
    """How the controller times a design, when the search needs it: on the sweep's first GPU holding its exclusive
    permit (no trial shares it while it is timed), else on this host's CPU between batches, when no worker of the
    search trains; cached per architecture and device in the results folder."""
    assert spec.search is not None
    if not needs_latency(spec.search):
        return None
    import contextlib

    import torch

    from ablations.sweep.slots import GpuPermit
    from ablations.training.latency import latency_ms

    gpu = opts.gpus[0] if opts.gpus else None
    device = torch.device("cuda", int(gpu) if gpu.isdigit() else 0) if gpu is not None else torch.device("cpu")
    how = spec.search.latency

    def measure(d: Design) -> float:
        with GpuPermit(opts.results, gpu).hold(exclusive=True) if gpu is not None else contextlib.nullcontext():
            return latency_ms(d.config, opts.results, how.batch, how.backward, device)

    return measure


def search(spec: StudySpec, opts: SweepOptions, slurm: SlurmOptions | None = None) -> dict[str, ArmResult]:
    """Train the references, run every arm of the search through the sweep, then re-evaluate the fronts and the
    references on the fresh seeds; the Optuna studies live in `<results>/search.db`. `slurm`: every sweep as job
    arrays (the controller, here, trains nothing).

    Raises:
        SenetError: a latency objective or constraint with `slurm` (the controller would time it on its own host).
    """
    assert spec.search is not None
    if slurm is not None and needs_latency(spec.search):
        raise SenetError("search.latency: not with --launcher slurm (the controller times each design alone on its "
                         "own device, which is not a node's); run `search` on a GPU host, or drop the latency "
                         "objective and constraint")  # fmt: skip
    train = trainer(opts, slurm)
    storage = f"sqlite:///{(opts.results / SEARCH_DB).resolve()}"
    opts.results.mkdir(parents=True, exist_ok=True)
    references = [Extra(label=r.label, set=r.set) for r in spec.search.references]
    train(as_sweep(spec, references, spec.search.seeds))
    arms = run_search(spec, storage, sweep_evaluator(spec, train), warm=grid_results(spec, opts),
                      latency=latency_probe(spec, opts))  # fmt: skip
    front = to_reevaluate(spec, opts.results)
    record_reevaluated(spec, storage, [d.label for d in front])
    train(as_sweep(spec, [*references, *(Extra(label=d.label, set=d.settings) for d in front)],
                   spec.search.reevaluate))  # fmt: skip
    return arms


JOIN_POLL_S = 5.0  # how often a worker joining a search looks for the designs asked since
JOIN_IDLE_S = 600.0  # how long it waits with nothing to train and no new design asked before it leaves


def join_search(
    spec: StudySpec, opts: SweepOptions, poll_s: float = JOIN_POLL_S, idle_s: float = JOIN_IDLE_S
) -> tuple[int, list[TrialStatus]]:
    """`worker NAME` on a search: join the sweep of every design asked so far, and again as the controller asks
    more, until the re-evaluation is recorded and trained (the search is over), or nothing new was asked for
    `idle_s` (a controller that died or paused: rerun `search NAME` and the workers)."""
    import time

    from ablations.study.searched import searched

    def asked() -> set[tuple[str, str]]:
        joined = searched(spec, opts.results)
        return {(part.name, e.label) for part in [joined, *joined._included] for e in part.extra}

    last: set[tuple[str, str]] = set()
    since = time.monotonic()
    while True:
        recorded = reevaluated(spec, opts.results) is not None
        code, statuses = run(searched(spec, opts.results), opts, create=False)
        if code == 130 or (recorded and code == 0):
            return code, statuses
        now = asked()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since > idle_s:
            print(f"worker: search {spec.name} asked no new design for {idle_s:.0f} s; leaving (rerun `senet-ablate "
                  f"search {spec.name}` if its controller stopped)")  # fmt: skip
            return code, statuses
        time.sleep(poll_s)


def summary_lines(spec: StudySpec, arms: dict[str, ArmResult]) -> list[str]:
    """Each arm's spend and its search-time front, and where the honest numbers are."""
    import numpy as np

    from ablations.pareto import front_mask

    assert spec.search is not None
    names = spec.search.objectives
    lines = []
    for arm, r in arms.items():
        lines.append(f"{arm} arm: {r.trained} designs trained ({len(r.warm)} more from a grid's results), "
                     f"{len(r.intensified)} intensified, {len(r.infeasible)} rejected untrained, {len(r.failed)} "
                     f"without a result, {r.asks} asks, {r.device_s / 3600:.2f} device-hours")  # fmt: skip
        if not r.designs:
            continue
        labels = list(r.designs)
        on = front_mask(np.array([r.designs[label] for label in labels]))
        for i in np.flatnonzero(on):
            values = ", ".join(f"{n} {v:,.0f}" if abs(v) >= 1000 else f"{n} {v:.4g}"
                               for n, v in zip(names, r.designs[labels[i]], strict=True))  # fmt: skip
            lines.append(f"  search-time front: {labels[i]}: {values}")
    lines.append(f"the fronts and the references were retrained on fresh seeds {spec.search.reevaluate}; "
                 f"`senet-ablate report {spec.name}` compares them (search-time values are selected on "
                 "themselves)")  # fmt: skip
    return lines

"""`senet-ablate search NAME --dry-run`: what a search would cost before it runs. The space's size, the share of
designs the constraints known before training let through (infeasible ones are never trained), their cost range,
the trials the budget buys, and a time estimate from training steps of a typical design timed on this host."""

from __future__ import annotations

import math
import os
import statistics
import time

import torch

from ablations.config import DATASETS, Host, RunConfig
from ablations.study.search_plan import Design, plan_designs, references
from ablations.study.spec import StudySpec
from ablations.sweep.probe import probe_steps

STEPS = 4  # timed training steps of the typical design (after two untimed ones that allocate its buffers)


def train_images(config: RunConfig) -> int | None:
    """Training images per epoch from the config alone (None for an image folder, counted only when scanned)."""
    d = config.data
    if d.dataset == "synthetic":
        total = d.synthetic_train
    elif d.dataset in DATASETS:
        total = DATASETS[d.dataset].train
    else:
        return None
    return min(total - d.val_size, d.train_subset or total)


def step_seconds(config: RunConfig, host: Host) -> float:
    """Seconds per training step of `config` at its batch size on this host's device (random images)."""
    device = torch.device(host.device)
    probe_steps(config, device, steps=2)  # kernels loaded, buffers allocated
    start = time.perf_counter()
    probe_steps(config, device, steps=2 + STEPS)
    mid = time.perf_counter()
    probe_steps(config, device, steps=2)
    end = time.perf_counter()
    return max(((mid - start) - (end - mid)) / STEPS, 1e-6)  # the extra steps alone: set-up and evaluation cancel


def _range(values: list[float], fmt: str) -> str:
    return f"{format(min(values), fmt)} – {format(max(values), fmt)}"


def search_dry_run(spec: StudySpec, host: Host | None = None, timed: bool = True) -> str:
    """The lines `search --dry-run` prints (nothing is written)."""
    s = spec.search
    assert s is not None
    host = host or Host.here()
    designs, sampled = plan_designs(spec, host)
    refs = references(spec, host)
    ok = [d for d in designs if d.feasible]
    share = len(ok) / len(designs)
    keys = ", ".join(f"{k} ({len(v)})" for k, v in s.space.items())
    lines = [f"search {spec.name}: {s.size():,} designs over {keys}; sampler {s.sampler}"
             + (", beside a random arm with the same budget" if s.random_arm else "")]  # fmt: skip
    how = f"of a seeded sample of {len(designs):,}" if sampled else f"{len(ok):,} of {len(designs):,}"
    lines.append(f"feasible before training: {share:.0%} ({how})"
                 + "".join(f"; {n} ≤ {c.max:,.6g}" for n, c in s.constraints.items()))  # fmt: skip
    if ok:
        lines.append(f"feasible designs cost {_range([d.params for d in ok], ',.0f')} params, "
                     f"{_range([d.gflops for d in ok], '.4g')} GFLOPs per image")  # fmt: skip
    lines += [f"reference {d.label}: {d.params:,} params, {d.gflops:.4g} GFLOPs" for d in refs]
    arms = 2 if s.random_arm else 1
    feasible_designs = min(s.budget.designs, round(share * s.size()))
    trials = arms * feasible_designs * len(s.seeds) + len(refs) * len(s.seeds)
    lines.append(f"budget: {s.budget.designs} designs × {len(s.seeds)} seeds × {arms} arm(s) + the references = "
                 f"{trials} trials, up to {arms * feasible_designs * s.intensify} more for intensification; then "
                 f"the front and the references on {len(s.reevaluate)} fresh seeds (re-evaluation)")  # fmt: skip
    if s.budget.gpu_hours:
        lines.append(f"device budget: {s.budget.gpu_hours:g} GPU-hours (the search stops at whichever comes first)")
    if timed and ok:
        lines.append(_estimate(_typical(ok), trials, host))
    if s.rungs:
        lines.append(f"rungs: each new design trains first at {', '.join(map(str, s.rungs))} epochs (a trial each, per "
                     "seed); only those on the rung's front go on to full length")  # fmt: skip
    if "latency_ms" in s.objectives or "latency_ms" in s.constraints:
        mode = "forward + backward" if s.latency.backward else "forward"
        lines.append(f"latency: {mode} of a batch of {s.latency.batch}, timed alone before a design trains (cached "
                     "per architecture and device in the results folder)")  # fmt: skip
    lines.append("objectives: " + ", ".join(s.objectives) + " (minimised; test error is read only at re-evaluation)")
    lines.append("nothing was written (dry run)")
    return "\n".join(lines)


def _typical(designs: list[Design]) -> Design:
    """The feasible design of median GFLOPs (the upper one of two middles)."""
    median = statistics.median_high(d.gflops for d in designs)
    return next(d for d in designs if d.gflops == median)


def _estimate(typical: Design, trials: int, host: Host) -> str:
    cfg = typical.config
    images = train_images(cfg)
    if images is None:
        return "time: not estimated (an image folder's size is known once it is scanned)"
    busy = os.getloadavg()[0]  # other work on the cores slows the timed steps: said, not hidden
    step = step_seconds(cfg, host)
    steps = math.ceil(images / cfg.train.batch_size) * cfg.train.epochs
    hours = trials * steps * step / 3600
    device = "this host's CPU" if host.device == "cpu" else "one of this host's GPUs"
    return (f"time: about {hours:.2g} device-hours of training for the search trials ({steps:,} steps of "
            f"{step * 1000:.0f} ms each for the typical design, {typical.label}, timed on {device}"
            + (f" while it was busy: load {busy:.1f} on {os.cpu_count()} cores" if host.device == "cpu" and busy >= 1
               else "")
            + "; evaluation and re-evaluation not counted)")  # fmt: skip

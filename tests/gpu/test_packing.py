"""`--trials-per-gpu auto` on a real CUDA device (marker `gpu`: make gpu-check on a GPU host; make test leaves it
out): the probe measures the CUDA context and a trial's peak before the trial trains, and packing stays within the
host's cores."""

import os

import pytest
import torch

from ablations.config import build_config
from ablations.paths import RESULT, run_dir
from ablations.sweep.packing import read_probes, read_rates
from ablations.sweep.probe import measure
from ablations.sweep.slots import host_cores, parse_gpus
from tests._support.configs import tiny_tree, write_spec
from tests._support.stores import assert_each_trial_complete_once, attempts, local_ledger

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _cuda():
    if not torch.cuda.is_available():
        pytest.fail("no CUDA device: the tests marked gpu run on a GPU host (make gpu-check)")


def test_a_probe_measures_the_peak_and_gives_the_memory_back():
    cfg = build_config(tiny_tree(data={"synthetic_size": 32}, train={"batch_size": 256})).resolved()
    peak, held, total = measure(cfg)
    assert 0 < peak < total and held > 0
    assert torch.cuda.memory_reserved() / 2**20 < peak  # what the probe reserved went back to the device


def test_a_packed_sweep_probes_before_the_first_trial_finishes_and_stays_within_the_cores(tmp_path):
    from ablations.cli import main

    spec = write_spec(tmp_path, seeds=3, data={"synthetic_train": 2048, "synthetic_size": 32}, train={"epochs": 3})
    results = tmp_path / "results"
    assert main(["sweep", str(spec), "--results", str(results), "--gpus", "0", "--trials-per-gpu", "auto",
                 "--no-progress"]) == 0  # fmt: skip
    assert_each_trial_complete_once(local_ledger(results), results, 6)
    [folder] = (results / "workers").iterdir()
    probes = read_probes(results, folder.name)
    done = attempts(local_ledger(results))
    assert {p.config_hash for p in probes} == {a.ticket.config_hash for a in done}  # each configuration, once
    [gpu] = parse_gpus("0", os.environ.get("CUDA_VISIBLE_DEVICES"))
    for p in probes:
        assert p.gpu == gpu and 0 < p.peak_mb < p.total_mb
        assert p.context_mb > 0 and p.context_mb != 512.0  # measured, not the old guess
    assert len({p.context_mb for p in probes}) == 1  # the GPU's first probe measured it; the later ones share it
    first_probe = min(path.stat().st_mtime for path in (folder / "probes").glob("*.json"))
    first_result = min((run_dir(results, a.key) / RESULT).stat().st_mtime for a in done)
    assert first_probe < first_result
    assert 1 <= len(list(folder.glob("slot*.log"))) <= host_cores()
    assert all(r.images_per_s > 0 for r in read_rates(results, folder.name).values())

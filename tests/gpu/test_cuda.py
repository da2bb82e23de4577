"""The GPU path on a real CUDA device: run by `make gpu-check` (marker `gpu`); `make test` leaves them out.

bf16 autocast with channels_last, resume, torch.compile with one graph reused across seeds, CUDA graphs,
out-of-memory classification of a real allocation failure, peak memory from reserved memory, and a packed
sweep whose workers share one GPU.
"""

import pytest
import torch

from ablations.config import build_config
from ablations.training.engine import Warm, is_out_of_memory, train
from tests._support.configs import tiny_tree, write_spec
from tests._support.stores import assert_each_trial_complete_once, local_ledger

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _cuda():
    if not torch.cuda.is_available():
        pytest.fail("no CUDA device: the tests marked gpu run on a GPU host (make gpu-check)")


def cuda_config(**train):
    tree = tiny_tree(data={"synthetic_train": 1024, "synthetic_size": 32}, train={"epochs": 2, **train})
    return build_config(tree).resolved()


def test_auto_resolves_to_bf16_channels_last_on_cuda_and_trains():
    cfg = cuda_config()
    assert (cfg.train.device, cfg.train.precision, cfg.train.channels_last) == ("cuda", "bf16", True)
    result = train(cfg, None, log=lambda _: None)
    assert result.status == "finished" and result.summary["test_top1_err"] < 60
    assert result.summary["peak_mem_mb"] >= torch.cuda.max_memory_allocated() / 2**20  # reserved ≥ allocated


def test_resume_on_cuda_restores_the_epoch_and_finishes(tmp_path):
    class Stop(Exception):
        pass

    from ablations.training.engine import Callback

    class After1(Callback):
        def on_epoch_end(self, epoch, metrics):
            if epoch == 1:
                raise Stop

    cfg = cuda_config()
    with pytest.raises(Stop):
        train(cfg, tmp_path, [After1()], log=lambda _: None)
    notes = []
    again = train(cfg, tmp_path, log=notes.append)
    assert again.resumed_from == 1 and again.status == "finished" and "resumed after epoch 1" in notes[0]


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_training_reuses_one_graph_across_seeds(mode):
    import torch._dynamo.utils as dynamo_utils

    torch.compiler.reset()
    warm = Warm()
    cfg = cuda_config(compile=mode)
    assert cfg.train.drop_last is True
    first = train(cfg, None, log=lambda _: None, warm=warm)
    frames = dynamo_utils.counters["stats"]["unique_graphs"]
    second = train(cfg.model_copy(update={"seed": 1}), None, log=lambda _: None, warm=warm)
    assert dynamo_utils.counters["stats"]["unique_graphs"] == frames  # no recompilation for another seed
    assert first.summary["compile_time_s"] > second.summary.get("compile_time_s", 0)
    assert second.status == "finished"


def test_a_real_cuda_allocation_failure_is_out_of_memory():
    total = torch.cuda.get_device_properties(0).total_memory
    with pytest.raises(Exception) as err:
        torch.empty(total * 2, dtype=torch.uint8, device="cuda")
    assert is_out_of_memory(err.value)


def test_a_packed_sweep_shares_one_gpu_and_records_memory(tmp_path):
    from ablations.cli import main
    from ablations.sweep.ledger import Ledger

    spec = write_spec(tmp_path, seeds=2, data={"synthetic_train": 1024, "synthetic_size": 32})
    results = tmp_path / "results"
    assert main(["sweep", str(spec), "--results", str(results), "--gpus", "0", "--trials-per-gpu", "auto",
                 "--no-progress"]) == 0  # fmt: skip
    assert_each_trial_complete_once(local_ledger(results), results, 4)
    memory = [a.memory for a in Ledger.open(local_ledger(results)).attempts() if a.memory]
    assert len(memory) == 4 and all(m["reserved_mb"] > 0 and m["total_mb"] > m["reserved_mb"] for m in memory)

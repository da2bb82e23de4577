"""The GPU path on a real CUDA device: run by `make gpu-check` (marker `gpu`); `make test` leaves them out.

bf16 autocast with channels_last, resume, torch.compile with one graph reused across seeds, CUDA graphs,
out-of-memory classification of a real allocation failure, peak memory from reserved memory, and a packed
sweep whose workers share one GPU.
"""

import contextlib

import pytest
import torch

from ablations.config import build_config
from ablations.training.engine import Warm, is_out_of_memory, train
from ablations.training.steps import train_step
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


def _param_mb(cfg):
    from ablations.costs import network_cost

    return network_cost(cfg.model.name, cfg.model_options(3, cfg.data.synthetic_classes), 32).params * 4 / 2**20


def test_auto_resolves_to_bf16_channels_last_on_cuda_and_trains_in_bf16(monkeypatch):
    cfg = cuda_config()
    assert (cfg.train.device, cfg.train.precision, cfg.train.channels_last) == ("cuda", "bf16", True)
    dtypes = set()

    def record(module, args, out):
        if isinstance(module, torch.nn.Conv2d) and module.training:
            dtypes.add(out.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        result = train(cfg, None, log=lambda _: None)
    finally:
        handle.remove()
    assert dtypes == {torch.bfloat16}  # every training convolution ran in bf16
    assert result.status == "finished" and result.summary["test_top1_err"] < 60
    # weights, gradients and momentum in fp32 at least, and far less than the device
    total_mb = torch.cuda.get_device_properties(0).total_memory / 2**20
    assert 3 * _param_mb(cfg) < result.summary["peak_mem_mb"] < total_mb / 4


def test_the_whole_step_is_captured_once_and_replayed_for_every_later_batch(monkeypatch):
    from ablations.training.graphs import WARMUP_STEPS

    replays = []
    real = torch.cuda.CUDAGraph.replay
    monkeypatch.setattr(torch.cuda.CUDAGraph, "replay", lambda self: (replays.append(1), real(self))[1])
    cfg = cuda_config(compile="graphs", batch_size=64)
    assert cfg.train.drop_last is True
    eager = train(cuda_config(batch_size=64), None, log=lambda _: None)
    result = train(cfg, None, log=lambda _: None)
    steps = (1024 - cfg.data.val_size) // 64 * cfg.train.epochs
    assert len(replays) == steps - WARMUP_STEPS  # every step after the eager warm-up, the capture's one included
    assert result.status == "finished" and "compile_time_s" in result.history[0]
    assert "compile_time_s" not in result.history[1]  # the graph persists across epochs
    assert abs(result.summary["test_top1_err"] - eager.summary["test_top1_err"]) < 10  # the same training, bf16 noise


def test_replays_compute_what_eager_steps_compute_under_a_moving_learning_rate():
    """fp32, no autocast: the captured step (fused SGD reading its learning rate from a tensor) gives the eager
    step's weights, step after step, while the learning rate changes at every step."""
    from ablations.training.graphs import GraphedStep, Tally

    def make():
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                  torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 4)).cuda()  # fmt: skip
        return net, torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, fused=True)

    (a, opt_a), (b, opt_b) = make(), make()
    graphed = GraphedStep(a, opt_a, torch.nn.CrossEntropyLoss(), contextlib.nullcontext, Tally(torch.device("cuda")))
    gen = torch.Generator(device="cuda").manual_seed(1)
    for i in range(12):
        x = torch.randn(16, 3, 8, 8, device="cuda", generator=gen)
        y = torch.randint(0, 4, (16,), device="cuda", generator=gen)
        for opt in (opt_a, opt_b):
            opt.param_groups[0]["lr"] = 0.1 / (1 + i)
        graphed(x, y)
        train_step(b, opt_b, torch.nn.CrossEntropyLoss(), x, y)
    assert graphed.replays == 12 - 3
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-5)


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
    assert frames >= 1 and dynamo_utils.counters["stats"]["unique_graphs"] == frames  # none for another seed
    assert first.summary["compile_time_s"] > 2 * second.summary["compile_time_s"]  # compiled once, reused
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
    total_mb = torch.cuda.get_device_properties(0).total_memory / 2**20
    lower = 3 * _param_mb(build_config(tiny_tree()).resolved())
    assert len(memory) == 4 and all(lower < m["reserved_mb"] < total_mb / 4 for m in memory)
    assert all(m["total_mb"] == pytest.approx(total_mb) for m in memory)

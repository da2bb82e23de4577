"""The GPU loop's parts that the CPU can check: the epoch's sums kept on the device, the CUDA-graph mode's
configuration rules, one evaluation shape, the warm compile cache keyed by mode, and the GPU recipe variants.
The captured step itself runs in tests/gpu/test_cuda.py."""

import math

import pytest
import torch

from ablations.config import Host, TrainSection, build_config, check_graphs
from ablations.errors import SenetError
from ablations.study.recipes import RECIPES, gpu_variant
from ablations.training.engine import Warm, train
from ablations.training.graphs import GraphedStep, Tally
from ablations.training.steps import _padded, evaluate
from tests.ablations.training.test_engine import tiny


def test_the_tally_sums_loss_and_hits_and_names_the_first_non_finite_step():
    tally = Tally(torch.device("cpu"))
    out = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
    y = torch.tensor([0, 0, 0])  # two of three right
    for loss in (0.5, 0.25, math.nan, 1.0, math.inf):
        tally.add(out, torch.tensor(loss), y)
    assert tally.first_bad() == 2  # the NaN, not the later inf
    assert int(tally.correct) == 10 and int(tally.step) == 5
    tally.reset()
    assert tally.first_bad() is None and tally.read() == (0.0, 0)
    tally.add(out, torch.tensor(0.5), y)
    tally.add(out[:2], torch.tensor(0.25), y[:2])
    assert tally.read() == (pytest.approx(0.5 * 3 + 0.25 * 2), 3)


def test_graphs_on_the_cpu_is_a_configuration_error_at_planning_and_in_the_engine():
    cfg = tiny(train={"compile": "graphs"}).resolved(Host("cpu"))
    with pytest.raises(SenetError, match=r"train.compile: 'graphs' .* needs a GPU.*allowed on the CPU: off"):
        check_graphs(cfg.train)
    with pytest.raises(SenetError, match="train.compile"):
        train(cfg, None, log=lambda _: None)
    check_graphs(tiny(train={"compile": "graphs"}).resolved(Host("cuda")).train)  # fine where it runs


def test_plan_refuses_a_graphs_study_on_a_cpu_host(tmp_path):
    from ablations.study.load import load_spec
    from ablations.study.trials import expand
    from tests._support.configs import write_spec

    spec = load_spec(write_spec(tmp_path, train={"compile": "graphs"}))
    with pytest.raises(SenetError, match="train.compile"):
        expand(spec, host=Host("cpu"))
    assert expand(spec, host=Host("cuda"))  # a GPU host plans it


def test_graphs_train_one_shape_and_eager_keeps_its_last_batch_on_either_device():
    assert tiny(train={"compile": "graphs"}).resolved(Host("cuda")).train.drop_last is True
    assert tiny().resolved(Host("cuda")).train.drop_last is False  # the keys of eager GPU trials stay as they were
    assert tiny().resolved(Host("cpu")).train.drop_last is False


def test_the_short_last_evaluation_batch_is_padded_to_the_full_shape_and_its_padding_dropped():
    x = torch.randn(3, 2, 4, 4).contiguous(memory_format=torch.channels_last)
    padded = _padded(x, 8)
    assert padded.shape == (8, 2, 4, 4) and padded.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(padded[:3], x) and not padded[3:].any()
    assert _padded(x, 3) is x
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3), torch.nn.Flatten(),
                              torch.nn.LazyLinear(5))  # fmt: skip
    net(torch.randn(2, 2, 4, 4))
    batches = [(torch.randn(4, 2, 4, 4), torch.randint(0, 5, (4,))), (x, torch.randint(0, 5, (3,)))]
    whole = evaluate(net, [(torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]))])
    assert evaluate(net, batches) == pytest.approx(whole)  # padding (CUDA only) or not, every image counts once


def test_a_warm_worker_never_serves_one_compile_mode_with_another_modes_module(monkeypatch):
    compiled = []

    def fake_compile(model, mode=None):
        compiled.append(mode)
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    warm = Warm()
    for mode in ("reduce-overhead", "default", "default"):
        train(tiny(train={"epochs": 1, "compile": mode}).resolved(), None, log=lambda _: None, warm=warm)
    assert compiled == ["reduce-overhead", None]  # the third run reuses the second's module


def test_a_captured_step_needs_the_fused_optimizer():
    net = torch.nn.Linear(2, 2)
    plain = torch.optim.SGD(net.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="fused"):
        GraphedStep(net, plain, torch.nn.CrossEntropyLoss(), lambda: None, Tally(torch.device("cpu")))


def test_the_gpu_recipes_scale_the_learning_rate_with_the_batch_and_the_papers_keep_theirs():
    for name in ("he2016_cifar", "cifar_fast"):
        paper, gpu = RECIPES[name], RECIPES[f"{name}_gpu"]
        assert gpu["train.lr"] / paper["train.lr"] == pytest.approx(gpu["train.batch_size"] / paper["train.batch_size"])
        assert gpu["train.batch_size"] == 512 and gpu["train.compile"] == "graphs"
        assert gpu["train.warmup_epochs"] >= 2 and gpu["train.epochs"] == paper["train.epochs"]
        assert "train.compile" not in paper
    assert RECIPES["he2016_cifar"]["train.batch_size"] == 128  # He et al.
    assert gpu_variant(RECIPES["he2016_cifar"], 1024)["train.lr"] == pytest.approx(0.8)
    TrainSection.model_validate({k[6:]: v for k, v in RECIPES["cifar_fast_gpu"].items() if k.startswith("train.")})
    build_config({"train": {"compile": "graphs"}})

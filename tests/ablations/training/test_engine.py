"""The training engine: learning, divergence, exact resume, checkpoints and the LR schedules."""

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from ablations.config import TrainSection, build_config
from ablations.errors import SenetError
from ablations.study.recipes import RECIPES
from ablations.training import engine as train_mod
from ablations.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, set_aside
from ablations.training.engine import Callback, Warm, is_out_of_memory, train
from ablations.training.schedule import Schedule
from ablations.training.steps import evaluate
from tests._support.configs import tiny_tree

# 4 classes of 12×12 images, 256 training images in 8 steps of 32 per epoch, 3 epochs.
ENGINE = {"data": {"val_size": 64, "synthetic_train": 320, "synthetic_test": 64, "synthetic_size": 12,
                   "synthetic_classes": 4}, "train": {"epochs": 3, "lr": 0.05}}  # fmt: skip


def tiny(seed=0, **sections):
    merged = {k: {**ENGINE.get(k, {}), **sections.get(k, {})} for k in {*ENGINE, *sections}}
    return build_config({**tiny_tree(**merged), "seed": seed})


class Recorder(Callback):
    def __init__(self):
        self.events = []

    def on_start(self, info):
        self.events.append(("start", info["resumed_from"]))

    def on_epoch_end(self, epoch, metrics):
        self.events.append(("epoch", epoch))

    def on_end(self, result):
        self.events.append(("end", result.status))


def test_one_epoch_lowers_the_loss(tmp_path):
    cfg = tiny(train={"epochs": 1}, data={"synthetic_train": 1024})
    result = train(cfg, tmp_path, log=lambda _: None)
    first = result.history[0]
    # Chance on 4 classes is a loss of ln 4 ≈ 1.386 and 75% error; one epoch (30 steps) must beat both clearly.
    assert first["val_loss"] < math.log(4) - 0.3
    assert first["val_top1_err"] < 50
    assert result.status == "finished"
    for key in ("test_top1_err", "test_top5_err", "final_val_top1_err", "best_val_epoch", "params", "gflops"):
        assert key in result.summary
    assert (tmp_path / "result.json").exists() and (tmp_path / "checkpoint.pt").exists()


def test_metrics_and_callbacks_every_epoch():
    rec = Recorder()
    result = train(tiny(), None, [rec], log=lambda _: None)
    assert rec.events == [("start", 0), ("epoch", 1), ("epoch", 2), ("epoch", 3), ("end", "finished")]
    keys = {"epoch", "train_loss", "train_top1_err", "val_loss", "val_top1_err", "val_top5_err", "lr",
            "epoch_time_s", "epoch_images_per_s", "epoch_peak_mem_mb"}  # fmt: skip
    assert all(set(m) == keys for m in result.history)
    assert result.summary["final_val_top1_err"] == result.history[-1]["val_top1_err"]
    assert result.summary["best_val_top1_err"] == min(m["val_top1_err"] for m in result.history)


def test_nan_loss_ends_as_diverged_at_once(monkeypatch):
    real = train_mod.build_model

    class PoisonAfter(torch.nn.Module):
        def __init__(self, net, calls):
            super().__init__()
            self.net, self.calls = net, calls

        def forward(self, x):
            self.calls -= 1
            out = self.net(x)
            return out * float("nan") if self.calls < 0 and self.training else out

    monkeypatch.setattr(train_mod, "build_model", lambda name, opts: PoisonAfter(real(name, opts), 12))
    rec = Recorder()
    result = train(tiny(), None, [rec], log=lambda _: None)
    assert result.status == "diverged"
    assert result.diverged_epoch == 2  # 8 steps per epoch: step 13 is in epoch 2
    assert len(result.history) == 1
    assert rec.events[-1] == ("end", "diverged")
    assert "not finite at epoch 2" in result.notes[-1]


def test_huge_learning_rate_diverges():
    result = train(tiny(train={"lr": 1e30, "epochs": 2}), None, log=lambda _: None)
    assert result.status == "diverged"


class CrashAfter(Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, epoch, metrics):
        if epoch == self.epoch:
            raise KeyboardInterrupt


def _weights(path):
    return load_checkpoint(path / "checkpoint.pt")["model"]


def test_crash_and_resume_gives_the_uninterrupted_weights(tmp_path):
    cfg = tiny()
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    full = train(cfg, straight, log=lambda _: None)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, resumed, [CrashAfter(1)], log=lambda _: None)
    rec, notes = Recorder(), []
    again = train(cfg, resumed, [rec], log=notes.append)
    assert rec.events[0] == ("start", 1) and again.resumed_from == 1
    assert "resumed after epoch 1" in notes[0]
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert again.summary["test_top1_err"] == full.summary["test_top1_err"]
    assert [m["val_loss"] for m in again.history] == [m["val_loss"] for m in full.history]


def test_kill_9_mid_run_then_resume(tmp_path):
    """A real SIGKILL of the training process after epoch 2's checkpoint; the rerun finishes identically."""
    cfg = tiny()
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    train(cfg, straight, log=lambda _: None)
    script = textwrap.dedent(f"""
        import os, signal, json
        from pathlib import Path
        from ablations.config import build_config
        from ablations.training.engine import Callback, train
        class Kill(Callback):
            def on_epoch_end(self, epoch, metrics):
                if epoch == 2:
                    os.kill(os.getpid(), signal.SIGKILL)
        train(build_config(json.loads({cfg.model_dump_json()!r})), Path({str(killed)!r}), [Kill()])
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=os.getcwd())
    assert proc.returncode == -9, proc.stderr
    assert load_checkpoint(killed / "checkpoint.pt")["epoch"] == 2
    assert not (killed / "result.json").exists()
    again = train(cfg, killed, log=lambda _: None)
    assert again.resumed_from == 2
    a, b = _weights(straight), _weights(killed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_corrupt_checkpoint_is_a_clear_error_and_training_restarts(tmp_path):
    ckpt = tmp_path / "checkpoint.pt"
    ckpt.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(CheckpointError, match=rf"^{ckpt}: checkpoint is unreadable"):
        load_checkpoint(ckpt)
    notes = []
    result = train(tiny(train={"epochs": 1}), tmp_path, log=notes.append)
    assert result.resumed_from == 0 and result.status == "finished"
    assert "restarting from scratch" in notes[0]
    assert load_checkpoint(ckpt)["epoch"] == 1
    (aside,) = tmp_path.glob("checkpoint.pt.unloadable-*")  # the torn file takes the same path: set aside
    assert aside.read_bytes() == b"\x00not a checkpoint" and aside.name in notes[0]


class Foreign:
    """A class `torch.load(weights_only=True)` refuses (as a checkpoint of another code version may hold one)."""


def _shape(state):
    last = list(state["model"])[-1]  # the classifier: every earlier tensor fits and is copied before the refusal
    state["model"][last] = torch.zeros(7, *state["model"][last].shape[1:])


def _missing(state):
    state["model"].pop(next(iter(state["model"])))


def _optimizer(state):
    state["optimizer"]["param_groups"][0]["params"] = [0]


def _pickled(state):
    state["extra"] = Foreign()


@pytest.mark.parametrize("damage", [_shape, _missing, _optimizer, _pickled], ids=lambda f: f.__name__.strip("_"))
def test_a_checkpoint_this_code_cannot_load_is_set_aside_and_the_run_starts_over(tmp_path, damage):
    """Item 8 (issue 19): a checkpoint with the right key that this code version cannot load (another network's
    state dict, a pickle `weights_only` refuses) crashed every attempt and was never discarded."""
    cfg = tiny(train={"epochs": 2})
    straight, damaged = tmp_path / "straight", tmp_path / "damaged"
    train(cfg, straight, log=lambda _: None)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, damaged, [CrashAfter(1)], log=lambda _: None)
    ckpt = damaged / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=True)
    damage(state)
    torch.save(state, ckpt)
    content = ckpt.read_bytes()
    notes = []
    result = train(cfg, damaged, log=notes.append)
    assert result.status == "finished" and result.resumed_from == 0
    (aside,) = damaged.glob("checkpoint.pt.unloadable-*")
    assert aside.read_bytes() == content  # kept as it was, never deleted
    assert len(notes) == 1 and "\n" not in notes[0] and aside.name in notes[0] and "restarting from scratch" in notes[0]
    assert result.notes == notes
    a, b = _weights(straight), _weights(damaged)  # a fresh start: nothing of the refused file stayed in the network
    assert load_checkpoint(ckpt)["epoch"] == 2 and all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_of_another_configuration_is_not_resumed(tmp_path):
    train(tiny(train={"epochs": 1}), tmp_path, log=lambda _: None)
    notes = []
    result = train(tiny(train={"epochs": 1}, se={"reduction": 2}), tmp_path, log=notes.append)
    assert result.resumed_from == 0 and "another configuration" in notes[0]
    assert len(list(tmp_path.glob("checkpoint.pt.unloadable-*"))) == 1


def test_truncated_checkpoint_write_never_replaces_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"model": {}, "epoch": 1}, path)

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", explode)
    with pytest.raises(OSError):
        save_checkpoint({"model": {}, "epoch": 2}, path)
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temp file left


def test_missing_dataset_is_a_user_error(tmp_path):
    cfg = tiny(data={"dataset": "fashion_mnist", "root": str(tmp_path / "nowhere"), "val_size": 10})
    with pytest.raises(SenetError, match="nowhere"):
        train(cfg, None, log=lambda _: None)


@pytest.mark.parametrize(
    ("error", "oom"),
    [
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
        (RuntimeError("CUDA out of memory. Tried to allocate"), True),
        (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"), True),
        (RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"), True),
        (RuntimeError("CUDA error: an illegal memory access was encountered"), False),
        (ValueError("bug"), False),
    ],
)
def test_allocation_failures_of_every_library_count_as_out_of_memory(error, oom):
    """cuBLAS and cuDNN workspace failures used to be retried packed instead of alone on their GPU."""
    assert is_out_of_memory(error) is oom


def test_cuda_requested_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the error is for machines without it")
    with pytest.raises(SenetError, match="^train.device: 'cuda' requested"):
        train(tiny(train={"device": "cuda"}), None)


def _lrs(steps_per_epoch=10, **train):
    cfg = TrainSection(**train)
    s = Schedule(cfg, steps_per_epoch)
    return s, [s(i) for i in range(cfg.epochs * steps_per_epoch)]


def test_multistep_divides_by_ten_at_half_and_three_quarters():
    _, f = _lrs(epochs=8, schedule="multistep")
    assert f[0] == 1 and f[39] == 1 and f[40] == pytest.approx(0.1) and f[60] == pytest.approx(0.01)


def test_cosine_with_warmup():
    _, f = _lrs(epochs=4, schedule="cosine", warmup_epochs=1)
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(math.cos(math.pi * 9 / 40) / 2 + 0.5)
    assert f[-1] < 0.01 and all(a >= b for a, b in zip(f[10:], f[11:], strict=False))


def test_plateau_drops_after_patience_at_most_max_drops():
    s, _ = _lrs(epochs=10, schedule="plateau", plateau_patience=1, plateau_max_drops=2)
    for loss in (1.0, 0.9, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95):
        s.end_epoch(loss)
    assert s.drops == 2 and s(0) == pytest.approx(0.01)


def test_evaluate_top5_is_topk_for_few_classes():
    net = torch.nn.Linear(3, 3)
    with torch.no_grad():
        net.weight.copy_(torch.eye(3))
        net.bias.zero_()
    x = torch.eye(3)
    y = torch.tensor([0, 2, 2])
    metrics = evaluate(net, [(x, y)])
    assert metrics["top1_err"] == pytest.approx(100 / 3) and metrics["top5_err"] == 0


def test_recipes():
    assert RECIPES["he2016_cifar"]["train.milestones"] == [0.5, 0.75]
    assert RECIPES["imagenet_ablation"]["se.bias"] is False


@pytest.mark.parametrize("content", [b"torn", b"", b"PK\x03\x04 half a zip", b"\x80\x02]q\x00(K\x01"])
def test_any_torn_checkpoint_is_a_checkpoint_error(tmp_path, content):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="checkpoint is unreadable"):
        load_checkpoint(path)


def test_a_warm_cache_reuses_the_decoded_data_and_gives_the_same_result(tmp_path):
    """A long-lived worker keeps decoded datasets between trials; results are those of a fresh process."""
    warm = Warm()
    first = train(tiny(train={"epochs": 1}), None, log=lambda _: None, warm=warm)
    assert len(warm.data) == 1
    cached = next(iter(warm.data.values()))
    second = train(tiny(train={"epochs": 1}, seed=1), None, log=lambda _: None, warm=warm)
    assert len(warm.data) == 1 and next(iter(warm.data.values())) is cached  # not decoded again
    cold = train(tiny(train={"epochs": 1}, seed=1), None, log=lambda _: None)
    assert second.summary["test_top1_err"] == cold.summary["test_top1_err"]
    assert [m["val_loss"] for m in second.history] == [m["val_loss"] for m in cold.history]
    assert first.summary["test_top1_err"] != second.summary["test_top1_err"] or first.history != second.history


def test_compiled_training_drops_the_last_batch_evaluates_eagerly_and_times_the_compile(monkeypatch):
    """torch.compile: one training shape (drop_last), the eager module for evaluation, compile time apart."""
    compiled = []

    def fake_compile(model, mode=None):
        compiled.append(mode)
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    cfg = tiny(train={"epochs": 2, "compile": "reduce-overhead"}, data={"synthetic_train": 64 + 80}).resolved()
    assert cfg.train.drop_last is True
    warm = Warm()
    result = train(cfg, None, log=lambda _: None, warm=warm)
    assert compiled == ["reduce-overhead"]
    assert "compile_time_s" in result.history[0] and "compile_time_s" not in result.history[1]
    assert result.summary["compile_time_s"] == result.history[0]["compile_time_s"]
    train(cfg.model_copy(update={"seed": 1}), None, log=lambda _: None, warm=warm)
    assert compiled == ["reduce-overhead"]  # the same architecture reuses the compiled module


def test_a_callback_can_stop_the_run_before_anything_is_written(tmp_path):
    class Lost(Exception):
        pass

    class Guard(Callback):
        def before_save(self, epoch):
            if epoch == 2:
                raise Lost

    with pytest.raises(Lost):
        train(tiny(), tmp_path, [Guard()], log=lambda _: None)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 1
    assert not (tmp_path / "result.json").exists()


def test_set_aside_never_replaces_an_earlier_one(tmp_path):
    path = tmp_path / "checkpoint.pt"
    names = []
    for content in (b"first", b"second"):
        path.write_bytes(content)
        names.append(set_aside(path))
    assert not path.exists() and [p.read_bytes() for p in names] == [b"first", b"second"]

"""A run paused mid-epoch at a callback's request (a preemption's signal, a time limit) checkpoints where it stands
and resumes exactly: the same batches, sums and weights as the uninterrupted run (issue 21)."""

import pytest
import torch

from ablations.data.build import build_data
from ablations.paths import CHECKPOINT
from ablations.training.checkpoint import load_checkpoint
from ablations.training.engine import Callback, Paused, train
from tests.ablations.training.test_engine import _weights, tiny


class PauseAt(Callback):
    """Answers yes at its `at`-th question (the engine asks after every step but an epoch's last)."""

    def __init__(self, at):
        self.at, self.steps, self.saved = at, 0, []

    def pause_requested(self):
        self.steps += 1
        return self.steps == self.at

    def before_save(self, epoch):
        self.saved.append(epoch)


# 8 steps an epoch, 7 questions: after step 3 of the first epoch; after step 5 of the second
@pytest.mark.parametrize(("at", "epoch", "step"), [(3, 0, 3), (7 + 5, 1, 5)])
def test_a_run_paused_mid_epoch_resumes_to_the_uninterrupted_weights_and_history(tmp_path, at, epoch, step):
    cfg = tiny()
    full = train(cfg, tmp_path / "straight", log=lambda _: None)
    folder = tmp_path / "paused"
    asked = PauseAt(at)
    with pytest.raises(Paused) as paused:
        train(cfg, folder, [asked], log=lambda _: None)
    assert (paused.value.epoch, paused.value.step) == (epoch + 1, step)
    state = load_checkpoint(folder / CHECKPOINT)
    assert state["partial"]["epoch"] == epoch and state["partial"]["step"] == step and state["epoch"] == epoch
    assert asked.saved == [*range(1, epoch + 1), epoch]  # the lease is checked before the mid-epoch checkpoint too
    notes = []
    again = train(cfg, folder, log=notes.append)
    assert f"resumed in epoch {epoch + 1} at step {step}" in notes[0] and again.resumed_from == epoch
    a, b = _weights(tmp_path / "straight"), _weights(folder)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for key in ("train_loss", "train_top1_err", "val_loss", "lr"):
        assert [m[key] for m in again.history] == pytest.approx([m[key] for m in full.history], rel=1e-6), key
    assert again.summary["test_top1_err"] == full.summary["test_top1_err"]


def test_no_pause_is_asked_after_an_epochs_last_step():
    """The epoch's end checkpoints anyway: a pause asked there waits for the next step, never saves half an epoch
    that is whole."""
    cfg = tiny(train={"epochs": 1})
    asked = PauseAt(8)
    result = train(cfg, None, [asked], log=lambda _: None)
    assert result.status == "finished" and asked.steps == 7  # asked after steps 1..7 only


@pytest.mark.parametrize("start", [0, 3])
def test_a_loader_started_at_a_batch_gives_the_rest_of_that_epochs_batches(start):
    from ablations.config import DataSection

    section = DataSection(dataset="synthetic", synthetic_train=300, val_size=44, synthetic_size=8)
    data = build_data(section, batch_size=32, device=torch.device("cpu"), seed=5)
    data.train.set_epoch(2)
    whole = list(data.train)
    data.train.set_epoch(2, start)
    rest = list(data.train)
    assert len(rest) == len(whole) - start
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(whole[start:], rest, strict=True))
    assert len(list(data.train)) == len(whole)  # the next pass starts at its first batch again

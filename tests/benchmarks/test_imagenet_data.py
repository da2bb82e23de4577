"""The ImageNet-path benchmark runs end to end on a tiny plan (its figures come from `make bench`, not here)."""

from __future__ import annotations

import torch

from benchmarks._steps import Setup
from benchmarks._timing import Plan
from benchmarks.imagenet_data import CLASSES, imagenet_data, write_jpegs


def test_the_jpeg_folder_has_the_imagefolder_layout(tmp_path):
    write_jpegs(tmp_path, 8)
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == [f"class{i}" for i in range(CLASSES)]
    assert len(list(tmp_path.glob("train/*/*.jpg"))) == 8 and len(list(tmp_path.glob("val/*/*.jpg"))) == CLASSES


def test_the_benchmark_times_the_step_the_ddp_rank_and_both_loaders_side_by_side():
    result = imagenet_data(64, 4, Plan(warmup=1, steps=1, min_rounds=2, max_rounds=2, budget_s=1),
                           Setup.for_device(torch.device("cpu")), lambda _: None)  # fmt: skip
    names = [what for what, _ in result.rows]
    loaders = ["`ImageFolder loader, 0 workers (a pass)`", "`ImageFolder loader, 2 workers (a pass)`"]
    assert names[:4] == ["`ResNet-50 step`", "`ResNet-50 step, one DDP rank`", *loaders]
    assert all("images/s" in value for _, value in result.rows[:4])
    assert float(result.rows[-1][1]) > 0  # loader processes one device needs (two significant digits)
    assert not torch.distributed.is_initialized()  # later tests train alone

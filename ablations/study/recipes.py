"""Named training recipes: dotted overrides applied under a study's own settings (`train.recipe` in a spec).

Each recipe sets the `train.*` keys it cares about, and may set data or SE keys the recipe is defined by
(the paper's ImageNet ablation recipe removes the SE biases).
"""

from __future__ import annotations

from typing import Any

RECIPES: dict[str, dict[str, Any]] = {
    # He et al. 2016 (§4.2): SGD 0.9, wd 1e-4, batch 128, lr 0.1 ÷10 at 32k and 48k of 64k iterations
    # (50% and 75% of ~164 epochs), 45k/5k train/validation split.
    "he2016_cifar": {
        "train.epochs": 164,
        "train.batch_size": 128,
        "train.lr": 0.1,
        "train.momentum": 0.9,
        "train.weight_decay": 1e-4,
        "train.schedule": "multistep",
        "train.milestones": [0.5, 0.75],
        "train.gamma": 0.1,
        "data.val_size": 5000,
    },
    # A short cosine recipe for sweeps on a GPU: 30 epochs, one of warm-up, Nesterov, wd 5e-4.
    "cifar_fast": {
        "train.epochs": 30,
        "train.batch_size": 256,
        "train.lr": 0.2,
        "train.nesterov": True,
        "train.weight_decay": 5e-4,
        "train.warmup_epochs": 1,
        "train.schedule": "cosine",
        "train.label_smoothing": 0.1,
    },
    # Minutes on 2 CPU cores: 10k Fashion-MNIST training images, 4 cosine epochs.
    "fmnist_cpu": {
        "train.epochs": 4,
        "train.batch_size": 128,
        "train.lr": 0.1,
        "train.nesterov": True,
        "train.weight_decay": 5e-4,
        "train.warmup_epochs": 0.5,
        "train.schedule": "cosine",
        "data.dataset": "fashion_mnist",
        "data.train_subset": 10000,
        "data.val_subset": 2000,
    },
    # The paper's ImageNet ablations (§6, footnote 2): lr 0.1 ÷10 at validation plateaus, three times, about
    # 300 epochs, label smoothing, no FC biases in SE. Batch size, optimizer and wd are not stated; we use SGD
    # 0.9, 256 and 1e-4 (Table 2's settings and He et al.).
    "imagenet_ablation": {
        "train.epochs": 300,
        "train.batch_size": 256,
        "train.lr": 0.1,
        "train.weight_decay": 1e-4,
        "train.schedule": "plateau",
        "train.plateau_patience": 10,
        "train.plateau_max_drops": 3,
        "train.label_smoothing": 0.1,
        "se.bias": False,
        "data.dataset": "imagefolder",
        "data.val_size": 50000,
    },
}

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


GPU_BATCH = 512  # images per step of the GPU variants: a CIFAR ResNet's step stops being launch-bound around here
GPU_WARMUP_EPOCHS = 2.0  # gradual warm-up of the scaled learning rate (Goyal et al. 2017, §2.2)


def gpu_variant(recipe: dict[str, Any], batch: int = GPU_BATCH) -> dict[str, Any]:
    """A CIFAR recipe at a GPU-sized batch, chosen by naming it (`<recipe>_gpu`); the paper's recipes keep theirs.

    Linear scaling rule (Goyal et al. 2017, "Accurate, Large Minibatch SGD", §2.1): the learning rate grows with
    the batch, lr × batch / recipe batch, reached after a gradual warm-up of `GPU_WARMUP_EPOCHS` (or the recipe's
    own, if longer); epochs stay, so the run sees the same images in fewer, larger steps. The training step is
    captured as a CUDA graph (`train.compile: graphs`), which needs CUDA: such a recipe on the CPU is a
    configuration error naming train.compile.
    """
    scale = batch / recipe["train.batch_size"]
    return {
        **recipe,
        "train.batch_size": batch,
        "train.lr": recipe["train.lr"] * scale,
        "train.warmup_epochs": max(GPU_WARMUP_EPOCHS, recipe.get("train.warmup_epochs", 0.0)),
        "train.compile": "graphs",
    }


RECIPES["he2016_cifar_gpu"] = gpu_variant(RECIPES["he2016_cifar"])  # lr 0.4 at 512, 2 warm-up epochs
RECIPES["cifar_fast_gpu"] = gpu_variant(RECIPES["cifar_fast"])  # lr 0.4 at 512

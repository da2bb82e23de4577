"""What people see in MLflow: metric names grouped as `train/`, `val/`, `test/` and `cost/` (read back under the
engine's own names, from runs of this or the earlier flat naming), and the runs table a study's link opens.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

# The engine's (and the ledger's) name → the name in MLflow. Run pages group charts by the part before the slash.
LOGGED = {
    # every epoch
    "train_loss": "train/loss",
    "train_top1_err": "train/top1_err",
    "lr": "train/lr",
    "val_loss": "val/loss",
    "val_top1_err": "val/top1_err",
    "val_top5_err": "val/top5_err",
    "epoch_time_s": "cost/epoch_seconds",
    "epoch_images_per_s": "cost/epoch_images_per_s",
    "epoch_peak_mem_mb": "cost/epoch_peak_mem_mb",
    "compile_time_s": "cost/compile_seconds",  # per epoch, and their sum in the summary
    # once, at the end
    "final_val_top1_err": "val/final_top1_err",
    "final_val_top5_err": "val/final_top5_err",
    "final_val_loss": "val/final_loss",
    "best_val_top1_err": "val/best_top1_err",
    "best_val_epoch": "val/best_epoch",
    "test_top1_err": "test/top1_err",
    "test_top5_err": "test/top5_err",
    "test_loss": "test/loss",
    "epochs": "train/epochs",
    "diverged_epoch": "train/diverged_epoch",
    "train_time_s": "cost/train_seconds",
    "engine_s": "cost/engine_seconds",
    "images_per_s": "cost/images_per_s",
    "peak_mem_mb": "cost/peak_mem_mb",
    "params": "cost/params",  # a count, as `senet_core.cost` gives it
    "gflops": "cost/gflops",
}
INTERNAL = {v: k for k, v in LOGGED.items()}

VIEW_KEY = "senet-ablate"  # the runs table a link opens: `viewStateShareKey` in the URL, this experiment tag
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"  # MLflow 3's shared view: search facets and columns as JSON
VIEW_METRICS = ("test_top1_err", "final_val_top1_err")  # MLflow sorts metric columns by name; more push factors off


def logged(metrics: Mapping[str, float]) -> dict[str, float]:
    """Metrics as they go into MLflow (a name the table lacks keeps its own)."""
    return {LOGGED.get(k, k): v for k, v in metrics.items()}


def internal(metrics: Mapping[str, float]) -> dict[str, float]:
    """A run's metrics under the engine's names, whichever naming logged them (the grouped name wins a clash)."""
    flat = {k: v for k, v in metrics.items() if k not in INTERNAL}
    return flat | {INTERNAL[k]: v for k, v in metrics.items() if k in INTERNAL}


def spellings(name: str) -> tuple[str, ...]:
    """The names an engine metric may have in MLflow, the earlier flat one last."""
    return (LOGGED[name], name) if name in LOGGED else (name,)


def column(kind: str, key: str) -> str:
    """A runs-table column as MLflow's UI names it: ``metrics.`test/top1_err` ``, ``params.`se.reduction` ``."""
    return f"{kind}.`{key}`"


def view_state(factors: Iterable[str], flat_names: bool = False) -> str:
    """The study's runs table: every trial in one flat list sorted by test top-1 error (MLflow nests children
    under their parent only when sorted by start time), with the errors, the factors and the seed as columns.

    Args:
        factors: the grid keys of the study (their params are the columns).
        flat_names: the study's runs were logged under the earlier flat metric names.
    """
    name = (lambda m: m) if flat_names else LOGGED.__getitem__
    metrics = [column("metrics", name(m)) for m in VIEW_METRICS]
    columns = [*metrics, *(column("params", f) for f in sorted(set(factors))), column("tags", "senet.seed")]
    return json.dumps({"orderByKey": metrics[0], "orderByAsc": True, "selectedColumns": columns}, sort_keys=True)


def experiments_link(base: str) -> str:
    """The experiments list of an MLflow server, on the model-training view."""
    return f"{base.rstrip('/')}/#/experiments?workflowType=machine_learning"


def runs_link(base: str, experiment_id: str) -> str:
    """The link to a study's runs table on MLflow's model-training view (not the GenAI one MLflow 3 opens), in the
    study's view (`view_state`). The UI routes by the hash, so its query goes after the `#`."""
    query = f"workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"

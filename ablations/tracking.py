"""A thin layer over `MlflowClient`: one experiment and one parent run per study, one child run per trial.

Workers talk to MLflow with explicit run ids (no global active run), so a process that dies leaves a RUNNING
run that the controller later marks KILLED. The store is created once, by the controller, before any worker
starts: several processes creating a fresh SQLite database at once race in its migrations.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import time
import urllib.parse
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ablations.errors import SenetError
from ablations.ledger import host_name

PARENT = "parent"
TRIAL = "trial"
T = "senet."  # prefix of our tags
MAX_PARAM = 6000  # MLflow 3 param value limit in characters


def tracking_uri(explicit: str | None, results: Path) -> str:
    """`--tracking-uri`, else MLFLOW_TRACKING_URI, else SQLite in the results folder (never MLflow's cwd default)."""
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{results.resolve() / 'mlflow.db'}"
    return uri


def redact(uri: str) -> str:
    """The URI with any password replaced, for logs and tags."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return uri


@cache
def code_version() -> dict[str, str]:
    """Git sha and dirty flag of the checkout this code runs from ("unknown" outside a git checkout)."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else ""

    sha = git("rev-parse", "HEAD")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no")) if sha else False
    return {"git_sha": sha or "unknown", "git_dirty": str(dirty).lower()}


def environment_tags(device: str) -> dict[str, str]:
    """Code version, library versions and the device, saved beside every run."""
    import mlflow
    import torchvision

    tags = {f"{T}{k}": v for k, v in code_version().items()}
    tags |= {
        f"{T}torch": torch.__version__,
        f"{T}torchvision": torchvision.__version__,
        f"{T}mlflow": mlflow.__version__,
        f"{T}cuda": torch.version.cuda or "none",
        f"{T}device": device,
        f"{T}host": host_name(),
        f"{T}python": platform.python_version(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        tags[f"{T}gpu"] = torch.cuda.get_device_name()
    return tags


class Tracker:
    """Experiments, parent runs and child runs of senet-ablate in one MLflow tracking store."""

    def __init__(self, uri: str, results: Path) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.results = results
        self.client = MlflowClient(tracking_uri=uri)

    def check(self) -> None:
        """Fail with one clear line when the store cannot be reached (and create it when it is a new SQLite file)."""
        parts = urllib.parse.urlsplit(self.uri)
        if parts.scheme in ("http", "https"):
            # MLflow's REST client retries with back-off for minutes; a plain connect answers in a moment.
            port = parts.port or (443 if parts.scheme == "https" else 80)
            try:
                socket.create_connection((parts.hostname or "127.0.0.1", port), timeout=5).close()
            except OSError as err:
                raise SenetError(f"--tracking-uri: cannot reach {redact(self.uri)} ({err.strerror or err})") from None
        try:
            self.client.search_experiments(max_results=1)
        except Exception as err:  # MLflow raises many types (requests, SQLAlchemy, MlflowException)
            first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            raise SenetError(f"--tracking-uri: cannot reach {redact(self.uri)} ({first})") from None

    def experiment(self, study: str) -> str:
        """The study's experiment id, created with artifacts under `<results>/artifacts/<study>` if new."""
        name = f"senet-ablate/{study}"
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        artifacts = None
        if not self.uri.startswith(("http://", "https://", "databricks")):
            artifacts = (self.results.resolve() / "artifacts" / study).as_uri()
        return self.client.create_experiment(name, artifact_location=artifacts, tags={f"{T}study": study})

    def parent_run(self, study: str, description: str) -> str:
        """The study's parent run; a resumed sweep attaches to the existing one."""
        exp = self.experiment(study)
        runs = self.client.search_runs([exp], f"tags.`{T}role` = '{PARENT}'", max_results=1)
        if runs:
            run_id = runs[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        tags = {f"{T}role": PARENT, f"{T}study": study, "mlflow.note.content": description}
        return self.client.create_run(exp, run_name=study, tags=tags).info.run_id

    def finish_parent(self, run_id: str, ok: bool) -> None:
        self.client.set_terminated(run_id, "FINISHED" if ok else "FAILED")

    def start_trial(self, study: str, parent_id: str, trial: dict[str, Any], device: str) -> str:
        """A child run carrying the flattened config as params and the trial's identity as tags."""
        from mlflow.entities import Param

        exp = self.experiment(study)
        tags = {
            "mlflow.parentRunId": parent_id,
            f"{T}role": TRIAL,
            f"{T}study": study,
            f"{T}trial_key": trial["key"],
            f"{T}config_hash": trial["config_hash"],
            f"{T}seed": str(trial["seed"]),
            f"{T}label": trial["label"],
            f"{T}attempt": str(trial.get("attempt", 1)),
            **{f"factor.{k}": json.dumps(v) for k, v in trial["factors"].items()},
            **environment_tags(device),
        }
        run = self.client.create_run(exp, run_name=f"{trial['label']} s{trial['seed']}", tags=tags)
        params = [Param(k, json.dumps(v)[:MAX_PARAM]) for k, v in sorted(trial["flat"].items())]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run.info.run_id, params=params[i : i + 100])
        return run.info.run_id

    def log_epoch(self, run_id: str, epoch: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = _now_ms()
        batch = [Metric(k, float(v), now, epoch) for k, v in metrics.items() if k != "epoch"]
        self.client.log_batch(run_id, metrics=batch)

    def log_summary(self, run_id: str, summary: dict[str, float], status: str) -> None:
        from mlflow.entities import Metric, RunTag

        now = _now_ms()
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in summary.items()],
            tags=[RunTag(f"{T}outcome", status)],
        )

    def log_text(self, run_id: str, text: str, name: str) -> None:
        self.client.log_text(run_id, text, name)

    def end(self, run_id: str, status: str) -> None:
        """FINISHED, FAILED or KILLED."""
        self.client.set_terminated(run_id, status)

    def runs_frame(self, filter_string: str = "") -> pd.DataFrame:
        """Runs of every senet-ablate experiment as a DataFrame shaped like `mlflow.search_runs` (run_id, status,
        start_time, `params.*`, `metrics.*` = last value, `tags.*`), without touching MLflow's global tracking URI
        (`mlflow.set_tracking_uri` exports it to every child process)."""
        exps = [e.experiment_id for e in self.client.search_experiments() if e.name.startswith("senet-ablate/")]
        rows: list[dict[str, Any]] = []
        token = None
        while exps:
            page = self.client.search_runs(exps, filter_string, max_results=1000, page_token=token)
            for run in page:
                row: dict[str, Any] = {
                    "run_id": run.info.run_id,
                    "experiment_id": run.info.experiment_id,
                    "status": run.info.status,
                    "start_time": run.info.start_time,
                    "end_time": run.info.end_time,
                }
                row |= {f"params.{k}": v for k, v in run.data.params.items()}
                row |= {f"metrics.{k}": v for k, v in run.data.metrics.items()}
                row |= {f"tags.{k}": v for k, v in run.data.tags.items()}
                rows.append(row)
            token = page.token
            if not token:
                break
        return pd.DataFrame(rows)

    def running_trials(self, study: str) -> list[Any]:
        """Child runs of the study still marked RUNNING."""
        exp = self.experiment(study)
        return self.client.search_runs([exp], f"tags.`{T}role` = '{TRIAL}' and attributes.status = 'RUNNING'")


def open_store(uri: str, results: Path) -> Tracker:
    """A tracker on an existing store, for readers (reports): a missing SQLite file is a user error, not a new
    empty database."""
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        if not db.is_file():
            raise SenetError(f"--tracking-uri: no tracking store at {db}; run `senet-ablate sweep` first")
    tracker = Tracker(uri, results)
    tracker.check()
    return tracker


def _now_ms() -> int:
    return int(time.time() * 1000)

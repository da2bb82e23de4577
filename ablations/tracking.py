"""A thin layer over `MlflowClient`: one experiment and one parent run per study, one child run per trial attempt.

The Tracker owns every MLflow name the project uses (experiment names, tag keys, the parent-run lookup), so
the rest of the code reads typed `TrialRun` records instead of `tags.…` strings. Workers talk to MLflow with
explicit run ids (no global active run), buffered and retried by `ablations.sweep.runlog`. The sweep ledger is the
source of truth: a run is FINISHED only after the ledger accepted its trial's result, and the sweep repairs MLflow
from the ledger.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ablations.config import RunConfig, build_config, unflatten
from ablations.errors import SenetError
from ablations.mlflow_names import VIEW_TAG, internal, logged, spellings, view_state
from ablations.outcomes import Ending, RunStatus
from ablations.params import logged_params, param_text, read_param
from ablations.paths import TRACKING_ENV, artifacts_dir, mlflow_db, without_telemetry
from ablations.sqlite_store import seed_sqlite, sqlite_path
from ablations.urls import DATABASES, check_url, redact, scrub, with_driver

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.entities import Run

without_telemetry(os.environ)  # before MLflow is imported (lazily, in the functions below)
EXPERIMENT_PREFIX = "senet-ablate/"
ANSWER_S = 10.0  # seconds a tracking server has to answer its health check when a command starts
MAX_PARAM = 6000  # MLflow 3 param value limit in characters
SCHEMES = ("http", "https", "databricks", *DATABASES)


class Tag:
    """The tag keys senet-ablate writes; nothing else spells them."""

    ROLE = "senet.role"  # parent | trial
    STUDY = "senet.study"
    KEY = "senet.trial_key"
    CONFIG_HASH = "senet.config_hash"
    SEED = "senet.seed"
    LABEL = "senet.label"
    ATTEMPT = "senet.attempt"  # 1, 2, ... for the trial
    ATTEMPT_ID = "senet.attempt_id"  # the ledger's id of the attempt
    OUTCOME = "senet.outcome"  # finished | diverged
    ENDED_BY = "senet.ended_by"  # why a run ended KILLED or FAILED
    HOST_DEVICE = "senet.host_device"  # parent: the device `auto` resolved to in the last sweep
    FACTOR = "factor."  # + grid key, the level as a plain value (`param_text`)
    PARENT = "mlflow.parentRunId"
    NOTE = "mlflow.note.content"


@dataclass(frozen=True)
class TrialRun:
    """One child run as the reports read it."""

    run_id: str
    key: str
    seed: int
    label: str
    status: RunStatus
    outcome: str  # the `Ending` tag of a FINISHED run (finished / diverged) as stored, else ""
    start_ms: int
    end_ms: int | None
    metrics: dict[str, float]
    tags: dict[str, str] = field(repr=False)

    def tag(self, name: str) -> str | None:
        """A `senet.<name>` tag (device, torch, git_sha, ...)."""
        return self.tags.get(f"senet.{name}")


def tracking_uri(explicit: str | None, results: Path) -> str:
    """`--tracking-uri`, else MLFLOW_TRACKING_URI, else SQLite in the results folder (never MLflow's cwd default).

    Raises:
        SenetError: an unknown scheme or a URL typo that would otherwise become a file.
    """
    uri = explicit or os.environ.get(TRACKING_ENV) or f"sqlite:///{mlflow_db(results).resolve()}"
    option = "--tracking-uri" if explicit else TRACKING_ENV if os.environ.get(TRACKING_ENV) else "--tracking-uri"
    check_url(uri, option, SCHEMES)
    if "://" not in uri:
        raise SenetError(f"{option}: {redact(uri)} is not a URL; allowed: http(s)://host:port or a database URL")
    return with_driver(uri, option)


@cache
def code_version() -> dict[str, str]:
    """Git sha and dirty flag of the checkout this code runs from ("unknown" outside a git checkout)."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        try:
            out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return out.stdout.strip() if out.returncode == 0 else ""

    sha = git("rev-parse", "HEAD")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no")) if sha else False
    return {"git_sha": sha or "unknown", "git_dirty": str(dirty).lower()}


def code_tags(code: dict[str, str]) -> dict[str, str]:
    """`code_version()` as run tags."""
    return {f"senet.{k}": v for k, v in code.items()}


@cache
def environment_tags(device: str) -> dict[str, str]:
    """Library versions and the device, saved beside every run (the code version comes from the sweep)."""
    import mlflow
    import torch

    tags = {
        "senet.torch": torch.__version__,
        "senet.mlflow": mlflow.__version__,
        "senet.cuda": torch.version.cuda or "none",
        "senet.device": device,
        "senet.host": platform.node(),
        "senet.python": platform.python_version(),
        "senet.threads": str(torch.get_num_threads()),  # the training's CPU threads (a slot's share of the cores)
        "senet.host_cores": str(os.cpu_count() or 0),  # what the report's timing note weighs them against
    }
    if "torchvision" in sys.modules:
        tags["senet.torchvision"] = sys.modules["torchvision"].__version__
    if device.startswith("cuda") and torch.cuda.is_available():
        tags["senet.gpu"] = torch.cuda.get_device_name()
    return tags


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


class Tracker:
    """Experiments, parent runs and child runs of senet-ablate in one MLflow tracking store."""

    def __init__(self, uri: str, results: Path) -> None:
        from mlflow.tracking import MlflowClient

        seed_sqlite(uri, results)
        self.uri = uri
        self.results = results
        try:  # a SQL store is opened here: a damaged file or a missing driver fails now
            self.client = MlflowClient(tracking_uri=uri)
        except Exception as err:
            raise self._unreachable(err) from None
        self._experiments: dict[str, str] = {}
        self._viewed: dict[str, set[str]] = {}  # study → the factors its view has, as this tracker set it

    @staticmethod
    def preload() -> None:
        """Import MLflow's client and its SQL store (a second or two), e.g. while a worker waits for work."""
        import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
        import mlflow.tracking  # noqa: F401

    @property
    def remote(self) -> bool:
        return self.uri.startswith(("http://", "https://", "databricks"))

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
            # A server that accepts connections and never answers would hang MLflow's client for minutes.
            health = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + "/health", "", ""))
            try:
                urllib.request.urlopen(health, timeout=ANSWER_S).close()
            except OSError as err:  # an answer, even an error status, is for the client's own check below
                if isinstance(err, TimeoutError) or isinstance(getattr(err, "reason", None), TimeoutError):
                    raise SenetError(f"--tracking-uri: {redact(self.uri)} accepts connections but sent no answer "
                                     f"in {ANSWER_S:g} s; is it an MLflow server, and is it up?") from None  # fmt: skip
        try:
            self.client.search_experiments(max_results=1)
        except Exception as err:
            raise self._unreachable(err) from None

    def _unreachable(self, err: Exception) -> SenetError:
        """One line for a store MLflow cannot use (it raises many types: requests, SQLAlchemy, MlflowException)."""
        if isinstance(err, ModuleNotFoundError):
            return SenetError(
                f"--tracking-uri: {redact(self.uri)} needs the {err.name} package; pip install 'senet-ablate[postgres]'"
            )
        return SenetError(f"--tracking-uri: cannot reach {redact(self.uri)} ({scrub(_first_line(err), self.uri)})")

    # -- experiments and parent runs ---------------------------------------------------------------------------
    def experiment(self, study: str, create: bool = True) -> str | None:
        """The study's experiment id, created with artifacts under `<results>/artifacts/<study>` if new."""
        if study in self._experiments:
            return self._experiments[study]
        name = EXPERIMENT_PREFIX + study
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            self._experiments[study] = exp.experiment_id
        elif create:
            location = None if self.remote else artifacts_dir(self.results, study).as_uri()
            try:
                made = self.client.create_experiment(name, artifact_location=location, tags={Tag.STUDY: study})
            except Exception:  # sweeps starting together: another made it first (its name is unique)
                exp = self.client.get_experiment_by_name(name)
                if exp is None:
                    raise
                made = exp.experiment_id
            self._experiments[study] = made
        return self._experiments.get(study)

    def studies(self) -> dict[str, str]:
        """Study name → experiment id of every senet-ablate experiment in the store."""
        return {
            e.name.removeprefix(EXPERIMENT_PREFIX): e.experiment_id
            for e in self.client.search_experiments()
            if e.name.startswith(EXPERIMENT_PREFIX)
        }

    def find_parent(self, study: str) -> str | None:
        """The study's parent run id, or None when the study was never swept into this store."""
        exp = self.experiment(study, create=False)
        if exp is None:
            return None
        runs = self.client.search_runs([exp], f"tags.`{Tag.ROLE}` = 'parent'", max_results=100)
        first = min(runs, key=lambda r: (r.info.start_time, r.info.run_id), default=None)  # the same for everyone
        return first.info.run_id if first else None

    def make_parent(self, study: str, description: str, tags: dict[str, str]) -> str:
        """A new parent run of `study` (`sweep.repair.parent_run` decides, through the ledger, which one is kept)."""
        all_tags = {Tag.ROLE: "parent", Tag.STUDY: study, Tag.NOTE: description, **tags}
        return self.client.create_run(self.experiment(study), run_name=study, tags=all_tags).info.run_id

    def resume_parent(self, run_id: str, tags: dict[str, str]) -> None:
        """A sweep attaches to its study's parent run: RUNNING again, with this sweep's tags."""
        self.client.update_run(run_id, status=RunStatus.RUNNING.value)
        for k, v in tags.items():
            self.client.set_tag(run_id, k, v)

    def is_active(self, run_id: str) -> bool:
        """Whether the run exists and is not deleted."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id).info.lifecycle_stage == "active"
        except MlflowException:
            return False

    def finish_parent(self, run_id: str, ok: bool) -> None:
        self.client.set_terminated(run_id, (RunStatus.FINISHED if ok else RunStatus.FAILED).value)

    def log_files(self, run_id: str, paths: Iterable[Path], folder: str) -> None:
        for path in paths:
            self.client.log_artifact(run_id, str(path), artifact_path=folder)

    # -- trial runs ---------------------------------------------------------------------------------------------
    def start_trial(self, study: str, parent_id: str | None, trial: dict[str, Any], tags: dict[str, str]) -> str:
        """A child run carrying the flattened config as params and the trial's identity as tags.

        Args:
            trial: key, config_hash, seed, label, factors, attempt, attempt_id and `flat` (the flattened config).
            tags: environment and code-version tags.
        """
        from mlflow.entities import Param

        all_tags = {
            Tag.ROLE: "trial",
            Tag.STUDY: study,
            Tag.KEY: trial["key"],
            Tag.CONFIG_HASH: trial["config_hash"],
            Tag.SEED: str(trial["seed"]),
            Tag.LABEL: trial["label"],
            Tag.ATTEMPT: str(trial.get("attempt", 1)),
            Tag.ATTEMPT_ID: str(trial.get("attempt_id", "")),
            **{f"{Tag.FACTOR}{k}": param_text(v) for k, v in trial["factors"].items()},
            **tags,
        }
        if parent_id:
            all_tags[Tag.PARENT] = parent_id
        viewed = self._viewed.setdefault(study, set())
        if not set(trial["factors"]) <= viewed:  # once per study and worker, again when a trial brings a new factor
            viewed |= set(trial["factors"])
            self.set_view(study, viewed)
        run = self.client.create_run(self.experiment(study), run_name=f"{trial['label']} s{trial['seed']}",
                                     tags=all_tags)  # fmt: skip
        params = [Param(k, param_text(v)[:MAX_PARAM]) for k, v in sorted(logged_params(trial["flat"]).items())]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run.info.run_id, params=params[i : i + 100])
        return run.info.run_id

    def log_epoch(self, run_id: str, epoch: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = _now_ms()
        batch = [Metric(k, float(v), now, epoch) for k, v in logged(metrics).items() if k != "epoch"]
        self.client.log_batch(run_id, metrics=batch)

    def log_summary(self, run_id: str, summary: dict[str, float], outcome: Ending) -> None:
        from mlflow.entities import Metric, RunTag

        now = _now_ms()
        metrics = [Metric(k, float(v), now, 0) for k, v in logged(summary).items()]
        self.client.log_batch(run_id, metrics=metrics, tags=[RunTag(Tag.OUTCOME, Ending(outcome).value)])

    def log_text(self, run_id: str, text: str, name: str) -> None:
        self.client.log_text(run_id, text, name)

    def end(self, run_id: str, status: RunStatus, why: str | None = None) -> None:
        """FINISHED, FAILED or KILLED; `why` (for the latter two) goes into the ended_by tag."""
        if why:
            self.client.set_tag(run_id, Tag.ENDED_BY, why[:500])
        self.client.set_terminated(run_id, RunStatus(status).value)

    def trial_runs(self, keys: Iterable[str] | None = None, status: RunStatus | None = None) -> list[TrialRun]:
        """Child runs of every senet-ablate experiment (optionally only of `keys`, only in `status`), oldest first."""
        wanted = set(keys) if keys is not None else None
        query = f"tags.`{Tag.ROLE}` = 'trial'" + (f" and attributes.status = '{status}'" if status else "")
        out = [_trial_run(run) for run in self._search(query)]
        return sorted((r for r in out if wanted is None or r.key in wanted), key=lambda r: (r.start_ms, r.run_id))

    def trial(self, run_id: str, option: str) -> tuple[TrialRun, RunConfig]:
        """One trial's run and the configuration it trained, from its id (as a user typed it after `option`).

        Raises:
            SenetError: no such run in the store, or a run that is not a senet-ablate trial.
        """
        try:
            run = self.client.get_run(run_id)
        except Exception:  # MLflow raises its own exception types for an unknown or malformed id
            raise SenetError(f"{option}: {run_id!r} is not a run in {redact(self.uri)}") from None
        if run.data.tags.get(Tag.ROLE) != "trial" or not run.data.tags.get(Tag.KEY):
            raise SenetError(f"{option}: run {run_id} is not a senet-ablate trial run (no {Tag.KEY} tag)")
        config = build_config(unflatten({k: read_param(v) for k, v in run.data.params.items()}))
        return _trial_run(run), config

    def history(self, run_id: str, metric: str) -> dict[int, float]:
        """Step (epoch) → value of one metric (by the engine's name) of one run, whichever naming logged it."""
        steps: dict[int, float] = {}
        for name in reversed(spellings(metric)):  # the grouped name last: it wins
            steps |= {int(m.step): float(m.value) for m in self.client.get_metric_history(run_id, name)}
        return steps

    def set_view(self, study: str, factors: Iterable[str], flat_names: bool = False) -> None:
        """The runs table the study's link opens (`mlflow_names.view_state`), with these factors' columns."""
        from mlflow.exceptions import MlflowException

        experiment, state = self.experiment(study), view_state(factors, flat_names)
        try:
            self.client.set_experiment_tag(experiment, VIEW_TAG, state)
        except MlflowException as err:
            # MLflow's SQL store inserts a new tag after looking for it, so two writers of the first view (concurrent
            # repairs, the first trials of two workers) race on the unique key: the loser writes again, an update.
            if "UNIQUE constraint" not in str(err) and "duplicate key" not in str(err):
                raise
            self.client.set_experiment_tag(experiment, VIEW_TAG, state)

    def refresh_views(self) -> None:
        """Each study's view from the runs in the store: its factors, and the metric names its runs carry."""
        runs = self._search(f"tags.`{Tag.ROLE}` = 'trial'")
        by_study: dict[str, list[Run]] = {}
        for run in runs:
            by_study.setdefault(run.data.tags.get(Tag.STUDY, ""), []).append(run)
        for study in self.studies():
            mine = by_study.get(study, [])
            factors = {k.removeprefix(Tag.FACTOR) for r in mine for k in r.data.tags if k.startswith(Tag.FACTOR)}
            flat = bool(mine) and not any(k.startswith("test/") for r in mine for k in r.data.metrics)
            self.set_view(study, factors, flat)

    def _search(self, query: str) -> list[Run]:
        exps = list(self.studies().values())
        runs: list[Run] = []
        token = None
        while exps:
            page = self.client.search_runs(exps, query, max_results=1000, page_token=token)
            runs += list(page)
            if not (token := page.token):
                break
        return runs

    def runs_frame(self, filter_string: str = "") -> pd.DataFrame:
        """Every run of every senet-ablate experiment as a DataFrame shaped like `mlflow.search_runs` (run_id,
        status, start_time, `params.*`, `metrics.*` = last value, `tags.*`), for people and tests."""
        import pandas as pd

        rows = []
        for run in self._search(filter_string):
            row: dict[str, Any] = {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id,
                                   "status": run.info.status, "start_time": run.info.start_time,
                                   "end_time": run.info.end_time}  # fmt: skip
            row |= {f"params.{k}": v for k, v in run.data.params.items()}
            row |= {f"metrics.{k}": v for k, v in run.data.metrics.items()}
            row |= {f"tags.{k}": v for k, v in run.data.tags.items()}
            rows.append(row)
        return pd.DataFrame(rows)


def _trial_run(run: Run) -> TrialRun:
    tags = run.data.tags
    return TrialRun(
        run_id=run.info.run_id,
        key=tags.get(Tag.KEY, ""),
        seed=int(tags.get(Tag.SEED, "0")),
        label=tags.get(Tag.LABEL, ""),
        status=RunStatus(run.info.status),
        outcome=tags.get(Tag.OUTCOME, ""),
        start_ms=run.info.start_time or 0,
        end_ms=run.info.end_time,
        metrics=internal(run.data.metrics),
        tags=dict(tags),
    )


def open_store(uri: str, results: Path) -> Tracker:
    """A tracker on an existing store, for readers (reports): a missing SQLite file is a user error, not a new
    empty database."""
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise SenetError(f"--tracking-uri: no tracking store at {db}; run `senet-ablate sweep` first")
    tracker = Tracker(uri, results)
    tracker.check()
    return tracker


def _now_ms() -> int:
    return int(time.time() * 1000)

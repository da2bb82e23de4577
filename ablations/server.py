"""`senet-ablate server` and `ui`: an MLflow tracking server or UI in its own process group, taken down with us."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from pathlib import Path

from ablations.mlflow_names import experiments_link, runs_link
from ablations.paths import without_telemetry
from ablations.urls import DATABASES, check_url, redact, with_driver


def server_launch(
    backend_store_uri: str | None,
    artifacts_destination: str | None,
    results: Path,
    host: str,
    port: int,
    workers: int,
    environ: dict[str, str],
) -> tuple[list[str], dict[str, str]]:
    """The command and environment of `mlflow server`: the database URL goes by environment, never on the command
    line where `ps` shows it (default: $MLFLOW_BACKEND_STORE_URI, else sqlite in `results`)."""
    env = dict(environ)
    without_telemetry(env)
    backend = backend_store_uri or env.get("MLFLOW_BACKEND_STORE_URI")
    if backend:
        check_url(backend, "--backend-store-uri", DATABASES)
        backend = with_driver(backend, "--backend-store-uri")
    else:
        backend = f"sqlite:///{results.resolve() / 'mlflow.db'}"
    env["MLFLOW_BACKEND_STORE_URI"] = backend  # mlflow's own variable for --backend-store-uri
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")  # its GenAI job runners: 7 idle processes
    artifacts = artifacts_destination or (results.resolve() / "artifacts").as_uri()
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port), "--workers",
           str(workers), "--artifacts-destination", artifacts]  # fmt: skip
    return cmd, env


def tracking_server(
    backend_store_uri: str | None, artifacts_destination: str | None, results: Path, host: str, port: int, workers: int
) -> int:
    """An MLflow tracking server for many hosts (`server_launch`), taken down with us."""
    cmd, env = server_launch(backend_store_uri, artifacts_destination, results, host, port, workers, dict(os.environ))
    if env["MLFLOW_BACKEND_STORE_URI"].startswith("sqlite:"):
        results.mkdir(parents=True, exist_ok=True)
    artifacts = cmd[cmd.index("--artifacts-destination") + 1]
    print(f"MLflow tracking server on http://{host}:{port} ({redact(env['MLFLOW_BACKEND_STORE_URI'])}), artifacts "
          f"in {artifacts} (Ctrl-C to stop); browse it on {experiments_link(f'http://{host}:{port}')}",
          flush=True)  # fmt: skip
    return serve(cmd, env)


def ui_launch(
    uri: str | None, results: Path, host: str, port: int, workers: int, environ: dict[str, str]
) -> tuple[list[str], dict[str, str]]:
    """The command and environment of `mlflow ui` on the results folder's store (or `uri`): the store, password and
    all, goes by environment (mlflow's MLFLOW_BACKEND_STORE_URI), never on the command line where `ps` shows it."""
    from ablations.tracking import tracking_uri

    env = dict(environ)
    without_telemetry(env)
    env["MLFLOW_BACKEND_STORE_URI"] = tracking_uri(uri, results)
    if env["MLFLOW_BACKEND_STORE_URI"].startswith("sqlite:"):
        env["MLFLOW_DEFAULT_ARTIFACT_ROOT"] = (results.resolve() / "artifacts").as_uri()  # --default-artifact-root
    cmd = [sys.executable, "-m", "mlflow", "ui", "--host", host, "--port", str(port), "--workers", str(workers)]
    return cmd, env


def ui(uri: str | None, results: Path, host: str, port: int, workers: int) -> int:
    """The MLflow UI (`ui_launch`), with a link to each study's runs table."""
    from ablations.tracking import Tracker, sqlite_path  # MLflow: not for `server`

    cmd, env = ui_launch(uri, results, host, port, workers, dict(os.environ))
    store_uri = env["MLFLOW_BACKEND_STORE_URI"]
    base = f"http://{host}:{port}"
    print(f"MLflow UI on {base} (Ctrl-C to stop)")
    store = sqlite_path(store_uri)
    if store is None or store.is_file():
        # MLflow 3 opens an experiment on its GenAI overview, empty for training runs: link the runs tables, each
        # in its study's view (refreshed from the runs, those of earlier releases too).
        with contextlib.suppress(Exception):
            tracker = Tracker(store_uri, results)
            with contextlib.suppress(Exception):  # a read-only store still gets its links
                tracker.refresh_views()
            for study, exp in sorted(tracker.studies().items()):
                print(f"  {study}: {runs_link(base, exp)}")
    sys.stdout.flush()
    return serve(cmd, env)


def serve(cmd: list[str], env: dict[str, str]) -> int:
    """Run an MLflow server in its own process group and take the whole group down with us: on Ctrl-C, SIGTERM or
    SIGHUP, and (through the parent-death signal) when we are killed outright."""

    def die_with_parent() -> None:
        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    proc = subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=die_with_parent)

    def stop(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)
    try:
        return proc.wait()
    finally:
        if proc.poll() is None:
            stop(signal.SIGTERM, None)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group (uvicorn workers)

"""The layout of a results folder and the environment variables the harness reads: one home for each.

```
results/
  mlflow.db                 default MLflow tracking store (SQLite)
  artifacts/<study>/        MLflow artifacts of the study's runs
  ledger.db                 default sweep ledger (SQLite; ledger.journal.imported: a 0.2 journal it was made from)
  runs/<key>/               one trial: checkpoint.pt, result.json, traceback.txt, train.log
  workers/                  warm slot workers: one log and one pid record each
  sweeps/<id>.json          what a sweep asked for (its trial keys), read by its workers
  cache/                    torch.compile (inductor, triton) caches shared by the slots
  data/                     torchvision downloads (<results>/data: it follows --results)
```
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import MutableMapping
from pathlib import Path

from ablations.errors import SenetError

RESULTS = Path("results")  # the default results folder, relative to the working directory
DEFAULT_DATA = RESULTS / "data"  # downloads outside a command (a notebook) and before 0.5, whatever --results said
DATA_ENV = "SENET_ABLATE_DATA"  # where a command's downloads land: <--results>/data, set by the CLI for its workers
STORAGE_ENV = "SENET_ABLATE_STORAGE"  # the ledger URL; from the environment so a password never shows in `ps`
TRACKING_ENV = "MLFLOW_TRACKING_URI"  # MLflow's own variable for the tracking store
CACHE_ENV = "SENET_ABLATE_CACHE"  # the per-user cache folder (the empty MLflow database new stores copy)
# Seconds, read at use with `env_seconds` (never at import) and all checked by the CLI before a command runs.
HEARTBEAT_ENV = "SENET_ABLATE_HEARTBEAT_S"  # between a running trial's heartbeats (the ledger's lease renewal)
DB_RETRY_ENV = "SENET_ABLATE_DB_RETRY_S"  # how long the ledger rides out a database outage
TRACKING_RETRY_ENV = "SENET_ABLATE_TRACKING_RETRY_S"  # how long a worker rides out an unreachable MLflow
STALL_ENV = "SENET_ABLATE_STALL_S"  # the least time without a step before a running trial counts as stalled
SECONDS_ENV = (HEARTBEAT_ENV, DB_RETRY_ENV, TRACKING_RETRY_ENV, STALL_ENV)
LEDGER_FILE = "ledger.db"
CHECKPOINT = "checkpoint.pt"
RESULT = "result.json"
TRACEBACK = "traceback.txt"
TRAIN_LOG = "train.log"
# A trial key is `<12 hex digits of its config hash>-s<seed>`; nothing else may become a folder name, so a
# ledger shared with others can never point a worker outside the results folder.
_KEY = re.compile(r"[0-9a-f]{12}-s[0-9]{1,10}")


def check_key(key: str) -> str:
    """`key` if it is a well-formed trial key, else SenetError (it names a folder under `runs/`)."""
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise SenetError(f"ledger: {key!r} is not a trial key (<12 hex digits>-s<seed>); the ledger is damaged")
    return key


def run_dir(results: Path, key: str) -> Path:
    """The folder of one trial: checkpoint, result, traceback and its training log."""
    return results / "runs" / check_key(key)


def user_cache() -> Path:
    """`$SENET_ABLATE_CACHE`, else ~/.cache/senet-ablate (under `$XDG_CACHE_HOME` where that is set): what the
    harness keeps between results folders; deleting it is always safe."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "senet-ablate"


def with_python_path(env: dict[str, str], *folders: Path) -> dict[str, str]:
    """`env` with `folders` (a checkout) put first on `PYTHONPATH`, the entries it had kept after them: packages a
    locked-down host installed with `pip install --target DIR` are found through `PYTHONPATH`, in every child."""
    kept = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p not in map(str, folders)]
    return {**env, "PYTHONPATH": os.pathsep.join([*map(str, folders), *kept])}


def without_telemetry(env: MutableMapping[str, str]) -> None:
    """MLflow's telemetry tries the network from every process that imports it (GPU hosts have none, and what a
    researcher runs is theirs): off, unless the user's environment says otherwise."""
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def env_seconds(name: str, default: float) -> float:
    """The environment variable `name` as a number of seconds, or `default` when it is unset or empty.

    Raises:
        SenetError: the value is not a finite number > 0 (one line naming the variable; the CLI exits 2).
    """
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise SenetError(f"{name}: {shown!r} is not allowed; allowed: seconds > 0")
    return value


def check_environment() -> None:
    """Raise SenetError for the first numeric variable (SECONDS_ENV) set to something that is not seconds > 0:
    checked before a command runs, so a sweep never starts workers that would each die of it."""
    for name in SECONDS_ENV:
        env_seconds(name, 1.0)


def ledger_file(results: Path) -> Path:
    return results / LEDGER_FILE


def mlflow_db(results: Path) -> Path:
    return results / "mlflow.db"


def artifacts_dir(results: Path, study: str) -> Path:
    return results.resolve() / "artifacts" / study


def workers_dir(results: Path) -> Path:
    return results / "workers"


def sweeps_dir(results: Path) -> Path:
    return results / "sweeps"


def cache_dir(results: Path) -> Path:
    return results.resolve() / "cache"

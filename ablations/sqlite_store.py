"""A new SQLite tracking database, copied from an empty one made earlier instead of migrated from scratch."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

from ablations.paths import artifacts_dir, user_cache


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` tracking URI; None for any other store."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def seed_sqlite(uri: str, results: Path) -> None:
    """Give a new SQLite tracking database a copy of an empty one made earlier by the same MLflow version.

    MLflow creates a database by replaying every schema migration since its first release: 2-4 s of CPU for
    each new results folder (and for every sweep of the test suite). The first creation on a machine keeps an
    untouched copy in the cache folder (`user_cache`); later ones copy it. Any failure leaves MLflow to create the
    database itself, as it always could. Both files appear whole or not at all (written aside, then linked).
    """
    import shutil

    import mlflow
    from mlflow.tracking import MlflowClient

    db = sqlite_path(uri)
    if db is None:
        return
    template = user_cache() / f"mlflow-{mlflow.__version__}-empty.db"
    try:
        if db.exists() or not db.parent.is_dir():
            return
        if not template.is_file():
            template.parent.mkdir(parents=True, exist_ok=True)
            fresh = template.with_name(f"{template.name}.{os.getpid()}.tmp")
            fresh.unlink(missing_ok=True)
            MlflowClient(tracking_uri=f"sqlite:///{fresh}").search_experiments(max_results=1)
            os.replace(fresh, template)
        aside = db.with_name(f".{db.name}.{os.getpid()}.tmp")
        shutil.copyfile(template, aside)
        with contextlib.closing(sqlite3.connect(aside)) as con, con:  # MLflow's own Default experiment, made in
            location = artifacts_dir(results, "0").as_uri()  # the template's folder: point it at ours
            con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0", (location,))
        try:
            os.link(aside, db)  # never over a database another process created meanwhile
        except FileExistsError:
            pass
        finally:
            aside.unlink(missing_ok=True)
    except (OSError, ImportError, sqlite3.Error):
        return

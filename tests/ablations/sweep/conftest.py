"""Fixtures of the sweep tests."""

import os
import signal

import pytest

from tests._support.slurm import start_slurm


@pytest.fixture(autouse=True)
def _restore_signals():
    """A sweep run in-process installs its Ctrl-C/SIGTERM handlers: each test gets the ones it started with back."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


@pytest.fixture(scope="session")
def slurm_cluster():
    """One throwaway one-node Slurm cluster for the session (skips, saying why, where it cannot start). While it runs,
    this process's own environment points at it too, since submitit runs sbatch and sacct with `os.environ`."""
    cluster, why = start_slurm()
    if cluster is None:
        pytest.skip(f"Slurm unavailable: {why}")
    with pytest.MonkeyPatch.context() as mp:
        for key in set(os.environ) - set(cluster.env):
            mp.delenv(key)
        for key, value in cluster.env.items():
            mp.setenv(key, value)
        yield cluster
    cluster.stop()

"""`senet-ablate` run in this process on tiny images (no worker processes): its stdout, its JSON or its error."""

from __future__ import annotations

import json
from typing import Any

from ablations.cli import main
from tests._support.images import SIZE


def run_text(*args: str, capsys: Any) -> str:
    """`senet-ablate ARGS` in this process on tiny images (no worker processes); its stdout."""
    capsys.readouterr()
    assert main([*args, "--workers", "0", "--image-size", str(SIZE)]) == 0
    return capsys.readouterr().out


def run_json(*args: str, capsys: Any) -> dict[str, Any]:
    """`senet-ablate ARGS --json` in this process; its stdout parsed."""
    return json.loads(run_text(*args, "--json", "--no-progress", capsys=capsys))


def run_error(*args: str, capsys: Any) -> str:
    """`senet-ablate ARGS`, which must fail as a user error: its one stderr line."""
    capsys.readouterr()
    assert main(list(args)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("senet-ablate: error: "), err
    return err.removeprefix("senet-ablate: error: ")

"""A Python like the locked-down GPU host's, without downloading anything: a virtual environment without pip whose
site-packages holds only the host's packages (`benchmarks.kit.HOST` and what they require), as symbolic links to
this environment's files. Its children are the same Python (`sys.executable`), so sweep workers see what it sees.
"""

from __future__ import annotations

import glob
import shutil
import subprocess
import sys
import sysconfig
import venv
from collections import defaultdict
from importlib import metadata
from pathlib import Path

from packaging.utils import canonicalize_name

from benchmarks.kit import HOST, closure

SITE = Path(sysconfig.get_path("purelib"))  # this environment's site-packages, where the links point
PYENV = Path.home() / ".pyenv" / "versions"


def python(folder: Path) -> Path:
    """The host Python's executable in `folder` (made once: its packages, linked)."""
    exe = folder / "bin" / "python"
    if not exe.exists():
        venv.EnvBuilder(with_pip=False, symlinks=True).create(folder)
        link_host_packages(site_packages(folder))
    return exe


def site_packages(folder: Path) -> Path:
    return Path(sysconfig.get_path("purelib", vars={"base": str(folder), "platbase": str(folder)}))


def owners() -> dict[tuple[str, ...], set[str]]:
    """Each path under SITE (as parts, at every depth) → the distributions with files at or below it."""
    owned: dict[tuple[str, ...], set[str]] = defaultdict(set)
    for dist in metadata.distributions(path=[str(SITE)]):
        name = canonicalize_name(dist.metadata["Name"])
        for file in dist.files or ():
            parts = file.parts
            if parts[0] == "..":  # console scripts in bin/
                continue
            for depth in range(1, len(parts) + 1):
                owned[parts[:depth]].add(name)
    return owned


def link_host_packages(dest: Path) -> None:
    """Link into `dest` what belongs to the host's distributions alone: a folder wholly theirs as one link, a folder
    they share with others (a namespace, `__pycache__`) entry by entry; nothing of any other distribution."""
    host = {name for name, version in closure(HOST, f"{sys.version_info[0]}.{sys.version_info[1]}").items() if version}
    owned = owners()

    def place(parts: tuple[str, ...]) -> None:
        for entry in sorted((SITE.joinpath(*parts)).iterdir()):
            path = (*parts, entry.name)
            who = owned.get(path, set())
            if not who or not who & host:
                continue
            if who <= host:
                dest.joinpath(*path).symlink_to(entry)
            elif entry.is_dir():
                dest.joinpath(*path).mkdir()
                place(path)

    place(())


def interpreter(version: str) -> str | None:
    """A CPython `version` ("3.12") on this machine, if there is one: on PATH, or installed by pyenv."""
    candidates = [shutil.which(f"python{version}"), *sorted(glob.glob(str(PYENV / f"{version}.*/bin/python{version}")))]
    for exe in filter(None, candidates):
        done = subprocess.run([exe, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True,
                              text=True)  # fmt: skip
        if done.returncode == 0 and done.stdout.strip() == version:  # a pyenv shim answers 127 for a version not set
            return exe
    return None

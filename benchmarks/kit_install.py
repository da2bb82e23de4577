"""Install a GPU kit (`python -m benchmarks.kit`) on the host itself: its wheels into one folder to put first on
`PYTHONPATH`, and where its Fashion-MNIST lies.

Standard library only: this runs on the host before anything of the kit is installed. The host's Python installs
with its own pip (`--no-index --find-links kit/wheels --no-deps --target`); a Python without pip gets the wheels
unpacked instead, the same files for the same Python (`kit.json` names them), without console scripts. Neither
compiles bytecode up front (pip's compiling all 1,244 of MLflow's modules costs about 9 s an install): Python
writes it on first import, for the 550 imported; where PYTHONDONTWRITEBYTECODE is set, each process compiles what
it imports instead (about 1.5 s). A finished install carries a marker with the kit's digest and the
Python's version: installing again is a no-op until the kit changes, and an install interrupted half-way is never
mistaken for a finished one (it is built aside, then renamed into place).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

MARKER = ".senet-kit"  # in the installed folder: {"digest": kit.json's digest, "python": "3.12"}
FASHION = "fashion-mnist"  # the kit's Fashion-MNIST folder
# What the installing Python is, in one call: its version, platform, machine, whether it has pip, and which of the
# distributions named after the script (the host's, that the kit's packages need) it lacks.
_PROBE = (
    "import importlib.metadata as m, importlib.util, json, platform, sys\n"
    "def has(name):\n"
    "    try:\n        return bool(m.distribution(name))\n"
    "    except m.PackageNotFoundError:\n        return False\n"
    "print(json.dumps(['%d.%d' % sys.version_info[:2], sys.platform, platform.machine(),"
    " importlib.util.find_spec('pip') is not None, [n for n in sys.argv[1:] if not has(n)]]))"
)


class KitError(ValueError):
    """A kit that is missing, damaged or not for this Python: one line naming the path. (Not `SenetError`: this
    module imports nothing of the project, so that it runs before the kit's packages are there.)"""


def manifest(kit: Path) -> dict[str, Any]:
    """The kit's `kit.json`."""
    path = kit / "kit.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise KitError(
            f"{path}: no kit here (build one with `python -m benchmarks.kit` where there is network)"
        ) from None
    except (OSError, ValueError) as err:
        raise KitError(f"{path}: not a readable kit manifest ({err})") from None


def verify(kit: Path, meta: dict[str, Any], under: str) -> None:
    """Every file of the kit below `under` ("wheels/", "fashion-mnist/") is there, whole (size and sha256)."""
    for name, want in meta["files"].items():
        if not name.startswith(under):
            continue
        path = kit / name
        try:
            data = path.read_bytes()
        except OSError:
            raise KitError(f"{path}: missing from the kit (copy the whole kit folder again)") from None
        if len(data) != want["bytes"] or hashlib.sha256(data).hexdigest() != want["sha256"]:
            raise KitError(f"{path}: damaged ({len(data)} bytes, the kit has {want['bytes']}); copy the kit again")


def probe(python: str, names: list[str]) -> tuple[str, str, str, bool, list[str]]:
    """`python`'s version ("3.12"), sys.platform, machine, whether it can run pip, and which of the distributions
    `names` it lacks."""
    try:
        done = subprocess.run([python, "-c", _PROBE, *names], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as err:
        raise KitError(f"{python}: cannot run this Python ({err})") from None
    version, platform, machine, has_pip, lacking = json.loads(done.stdout)
    return version, platform, machine, has_pip, lacking


def install(kit: Path, target: Path | None = None, python: str = sys.executable) -> Path:
    """Install the kit's wheels for `python` into `target` (default `kit/site`), unless they are there already from
    this very kit; the folder to put first on `PYTHONPATH`."""
    kit = kit.resolve()
    target = (target or kit / "site").resolve()
    meta = manifest(kit)
    every_need = sorted({n for names in meta["host_needs"].values() for n in names})
    version, platform, machine, has_pip, lacking = probe(python, every_need)
    if version not in meta["pythons"] or platform != "linux" or machine != meta["machine"]:
        covered = ", ".join(meta["pythons"])
        raise KitError(f"{kit}: the kit is for Python {covered} on linux {meta['machine']}, not {version} on "
                       f"{platform} {machine} ({python}); build one with --pythons {version}")  # fmt: skip
    lacking = [n for n in lacking if n in meta["host_needs"][version]]
    if lacking:
        raise KitError(f"{kit}: {python} lacks {', '.join(lacking)}, which the kit's packages need and leave to the "
                       f"host; build the kit with --also {' '.join(lacking)}")  # fmt: skip
    stamp = {"digest": meta["digest"], "python": version}
    marker = target / MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == stamp:
                return target
        except ValueError:
            pass  # a damaged marker: this folder is ours (it has one), install again
    elif target.exists() and any(target.iterdir()):
        raise KitError(f"{target}: holds files the kit did not install; give an empty or new folder")
    verify(kit, meta, "wheels/")
    partial = target.with_name(f".{target.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    if has_pip:
        _pip_install(kit, partial, python)
    else:
        _unpack(kit, meta, partial, version)
    (partial / MARKER).write_text(json.dumps(stamp))
    if target.exists():
        shutil.rmtree(target)
    partial.rename(target)
    return target


def _pip_install(kit: Path, folder: Path, python: str) -> None:
    # --isolated: a host's PIP_* variables (PIP_REQUIRE_VIRTUALENV, an index URL) are not for this install.
    cmd = [python, "-m", "pip", "install", "--isolated", "--disable-pip-version-check", "-q", "--no-index",
           "--find-links", str(kit / "wheels"), "--no-deps", "--only-binary=:all:", "--no-compile", "--target",
           str(folder), "-r", str(kit / "requirements.txt")]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        raise KitError(f"{kit}: pip could not install the kit into {folder}: {lines[-1] if lines else 'no output'}")


def _unpack(kit: Path, meta: dict[str, Any], folder: Path, version: str) -> None:
    """What pip would install, for a Python without pip: each package's wheel for `version`, unzipped."""
    for name, package in sorted(meta["packages"].items()):
        wheel = package["wheels"].get(version)
        if wheel is None:  # a package this Python does not need
            continue
        path = kit / "wheels" / wheel
        try:
            with zipfile.ZipFile(path) as archive:
                archive.extractall(folder)
        except (OSError, zipfile.BadZipFile) as err:
            raise KitError(f"{path}: cannot unpack {name}'s wheel ({err})") from None
    # A wheel's <name>.data/purelib and /platlib belong at the top, as pip puts them (no wheel of today's kit has
    # any); scripts, headers and data stay under .data, unused by `python -m`.
    for data in folder.glob("*.data"):
        for kind in ("purelib", "platlib"):
            if (data / kind).is_dir():
                shutil.copytree(data / kind, folder, dirs_exist_ok=True)
                shutil.rmtree(data / kind)
    for info in folder.glob("*.dist-info"):
        (info / "INSTALLER").write_text("senet-ablate-kit\n")  # who installed it, as pip writes "pip"


def fashion(kit: Path) -> Path:
    """The kit's Fashion-MNIST folder (the four idx .gz files), checked whole."""
    kit = kit.resolve()
    verify(kit, manifest(kit), f"{FASHION}/")
    return kit / FASHION


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m benchmarks.kit_install", description=__doc__)
    p.add_argument("kit", type=Path, help="the kit folder (python -m benchmarks.kit --out)")
    p.add_argument("--target", type=Path, help="where to install (default KIT/site)")
    a = p.parse_args(argv)
    try:
        print(install(a.kit, a.target))
    except KitError as err:
        print(f"kit_install: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

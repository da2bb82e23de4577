"""`python -m benchmarks.kit`: the folder a GPU host without network needs beside the checkout, built where there is
network (results/gpu-kit; on the host `python3 -m benchmarks.gpu_check --kit results/gpu-kit` installs and uses it).

What it holds: `wheels/` (pinned `--no-deps` wheels, manylinux2014 x86_64, for CPython 3.11, 3.12 and 3.13),
`requirements.txt` (`==` pins, an environment marker where a package is needed on only some Pythons),
`fashion-mnist/` (the four idx .gz files) and `kit.json` (versions, the wheel of each package for each Python,
sizes, sha256s and one digest over them all). It must fit in the host's 64 MiB carry beside the checkout: a kit
over `LIMIT` is refused.

The package rule, from this virtual environment's metadata (`importlib.metadata`, markers evaluated for each
Python on x86_64 Linux):

- the roots are the project's own requirements (`senet-ablate`'s, no extras) with `mlflow` replaced by
  `mlflow-skinny`: the host runs `ablations.cli sweep` and `report`, `pytest -m gpu tests` and `benchmarks.run`,
  which use MLflow's tracking client on a SQLite store (skinny ships it, with its migrations) and never its server
  or UI; nothing reads `metadata.version("mlflow")` (MLflow itself checks which of its distributions is there and
  runs as skinny). `senet-ablate server` and `ui` need full MLflow and are not for the host. The tests need no
  plugin: no test sets a timeout, so pytest-timeout stays out;
- the kit is the closure of the roots' runtime requirements minus the closure of `HOST` (the packages the host's
  Python has, and what they require), each pinned to the version installed here, so the kit is what the tests
  ran against;
- one pure wheel when that release publishes one (SQLAlchemy, charset-normalizer and protobuf publish one beside
  their compiled speed-ups: the same code, slower in places we do not measure; SQLAlchemy's compiled wheels alone
  would cost 14 MB for three Pythons), else the compiled wheel for each Python (an abi3 wheel once);
- what the kit's packages require and leave to the host is listed per Python in `kit.json` (`host_needs`), and
  `kit_install` checks the host has it before installing: "the host's packages and what they require" is read
  from the versions installed here, and another timm may not bring click, say. `--also NAME` carries it too.

Where the kit falls short of the dev environment: MLflow's GPU system metrics need nvidia-ml-py, which neither
the project nor this environment installs (MLflow logs a warning and records CPU, memory, disk and network only).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement  # packaging: with pytest, in the dev extras
from packaging.utils import canonicalize_name

from ablations.datafiles import DEBIAN_FASHION, FASHION_FILES
from benchmarks.kit_install import FASHION, KitError

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "results" / "gpu-kit"
LIMIT = 56 * 2**20  # bytes: the checkout (about 2.5 MiB) must fit beside the kit in the host's 64 MiB carry
PYTHONS = ("3.11", "3.12", "3.13")
PLATFORM = "manylinux2014_x86_64"  # glibc 2.17: any GPU host's Linux of the last decade
# What the GPU host's Python has (with whatever these require): the kit leaves them, and their requirements, out.
HOST = ("torch", "torchvision", "numpy", "pandas", "matplotlib", "scipy", "statsmodels", "psutil", "rich", "pyyaml",
        "timm", "safetensors", "pytest", "pillow")  # fmt: skip
PROJECT = "senet-ablate"
SKINNY = {"mlflow": "mlflow-skinny"}  # the project's requirement → what the kit carries instead


def marker_environment(python: str) -> dict[str, str]:
    """PEP 508 marker variables of CPython `python` ("3.12") on x86_64 Linux."""
    return {"python_version": python, "python_full_version": f"{python}.0", "implementation_version": f"{python}.0",
            "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
            "implementation_name": "cpython", "platform_python_implementation": "CPython", "platform_release": "",
            "platform_version": ""}  # fmt: skip


def closure(requirements: Iterable[str], python: str) -> dict[str, str | None]:
    """Every distribution `requirements` (PEP 508 lines) need at run time on `python`, by this environment's
    metadata: canonical name → the version installed here (None: needed there, not installed here)."""
    env = marker_environment(python)

    def wanted(req: Requirement, extras: Iterable[str]) -> bool:
        return req.marker is None or any(req.marker.evaluate({**env, "extra": e}) for e in ("", *extras))

    asked: dict[str, set[str]] = {}  # name → the extras asked of it so far
    found: dict[str, str | None] = {}
    todo = [(canonicalize_name(r.name), frozenset(r.extras)) for r in map(Requirement, requirements) if wanted(r, ())]
    while todo:
        name, extras = todo.pop()
        if name in asked and extras <= asked[name]:
            continue
        asked.setdefault(name, set()).update(extras)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            found[name] = None
            continue
        found[name] = dist.version
        for req in map(Requirement, dist.requires or ()):
            if wanted(req, asked[name]):
                todo.append((canonicalize_name(req.name), frozenset(req.extras)))
    return found


def roots() -> list[str]:
    """The project's own runtime requirements (its extras' left out), with MLflow as mlflow-skinny."""
    lines = []
    for req in map(Requirement, metadata.requires(PROJECT) or ()):
        if req.marker is not None and "extra" in str(req.marker):
            continue
        req.name = SKINNY.get(canonicalize_name(req.name), req.name)
        lines.append(str(req))
    return lines


def needed(pythons: Iterable[str], also: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """What the kit carries: name → {"version", "pythons": the Pythons that need it}; `also` (names) is carried
    even where the host is expected to have it."""
    packages: dict[str, dict[str, Any]] = {}
    forced = {canonicalize_name(n) for n in also}
    for python in pythons:
        host = closure(HOST, python)
        for name, version in {**closure(roots(), python), **closure(forced, python)}.items():
            if name in host and name not in forced:
                continue
            if version is None:
                raise KitError(f"{name} is needed on Python {python} and not installed here to pin it; install it in "
                               f"this environment first")  # fmt: skip
            packages.setdefault(name, {"version": version, "pythons": []})["pythons"].append(python)
    return dict(sorted(packages.items()))


def host_needs(packages: dict[str, dict[str, Any]], pythons: Iterable[str]) -> dict[str, list[str]]:
    """For each Python, the distributions the kit's packages require and leave to the host (`kit_install` checks
    that the host has them): some come with the host's packages only by the versions installed here (click, anyio,
    h11 and idna come with timm only through this huggingface-hub)."""
    needs = {}
    for python in pythons:
        mine = [name for name, p in packages.items() if python in p["pythons"]]
        needs[python] = sorted(n for n, version in closure(mine, python).items() if n not in packages and version)
    return needs


def requirement_line(name: str, version: str, pythons: list[str], covered: Iterable[str]) -> str:
    """`name==version`, with a marker when only some of the `covered` Pythons need it."""
    if set(pythons) >= set(covered):
        return f"{name}=={version}"
    return f"{name}=={version}; " + " or ".join(f'python_version == "{p}"' for p in pythons)


def is_pure(name: str) -> bool:
    """Whether the wheel installed here is pure Python (its tags all `-none-any`)."""
    try:
        text = metadata.distribution(name).read_text("WHEEL") or ""
    except metadata.PackageNotFoundError:
        return False
    tags = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Tag:")]
    return bool(tags) and all(tag.endswith("-none-any") for tag in tags)


def wheel_name(filename: str) -> str:
    """The canonical distribution name of a wheel file."""
    return canonicalize_name(filename.split("-", 1)[0])


def pip_download(pins: list[str], dest: Path, python: str, platform: str) -> list[str]:
    """`pip download --no-deps` of `pins` for CPython `python` on `platform` ("any": pure wheels only) into `dest`;
    the wheel files now there. KitError with pip's last line when it fails."""
    dest.mkdir(parents=True, exist_ok=True)
    if not pins:
        return []
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q", "--no-deps",
           "--only-binary=:all:", "--python-version", python, "--platform", platform, "--dest", str(dest),
           *pins]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")] or done.stderr.splitlines()
        raise KitError(f"pip download for Python {python} ({platform}): {errors[-1] if errors else 'failed'}")
    return sorted(p.name for p in dest.glob("*.whl"))


def download(packages: dict[str, dict[str, Any]], pythons: list[str], wheels: Path, scratch: Path) -> None:
    """Fetch the wheels into `wheels` and record in `packages[name]["wheels"]` which one each Python installs."""

    def pure(name: str) -> list[str]:  # a pure wheel of a package installed compiled, if its release has one
        try:
            return pip_download([pins[name]], scratch / f"pure-{name}", pythons[0], "any")
        except KitError:
            return []

    pins = {name: f"{name}=={p['version']}" for name, p in packages.items()}
    installed_pure = [n for n in packages if is_pure(n)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        found = {n: pool.submit(pure, n) for n in packages if n not in installed_pure}
        files = pip_download([pins[n] for n in installed_pure], scratch / "pure", pythons[0], "any")
        for name, future in found.items():
            for f in future.result():
                shutil.move(scratch / f"pure-{name}" / f, scratch / "pure" / f)
                files.append(f)
        compiled = [n for n, future in found.items() if not future.result()]
        per_python = {py: [pins[n] for n in compiled if py in packages[n]["pythons"]] for py in pythons}
        fetched = {py: pool.submit(pip_download, ps, scratch / py, py, PLATFORM) for py, ps in per_python.items() if ps}
        chosen = {py: future.result() for py, future in fetched.items()}
    for f in files:
        name = wheel_name(f)
        packages[name]["wheels"] = {py: f for py in packages[name]["pythons"]}
        shutil.move(scratch / "pure" / f, wheels / f)
    for py, names in chosen.items():
        for f in names:
            packages[wheel_name(f)].setdefault("wheels", {})[py] = f
            if not (wheels / f).exists():  # an abi3 wheel serves several Pythons
                shutil.move(scratch / py / f, wheels / f)
    for name, p in packages.items():
        missing = [py for py in p["pythons"] if py not in p.get("wheels", {})]
        if missing:
            raise KitError(f"no wheel of {pins[name]} for Python {', '.join(missing)} ({PLATFORM})")


def file_facts(folder: Path) -> dict[str, dict[str, Any]]:
    """Every file under `folder` (but kit.json): relative path → {"bytes", "sha256"}."""
    facts = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "kit.json"):
        data = path.read_bytes()
        facts[path.relative_to(folder).as_posix()] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    return facts


def digest(files: dict[str, dict[str, Any]]) -> str:
    return hashlib.sha256("".join(f"{k} {v['sha256']}\n" for k, v in sorted(files.items())).encode()).hexdigest()


def build(out: Path, data: Path, pythons: list[str], also: Iterable[str] = ()) -> dict[str, Any]:
    """Write the kit into `out` (replacing an earlier kit there, never anything else); its manifest."""
    if out.exists() and not (out / "kit.json").is_file() and any(out.iterdir()):
        raise KitError(f"--out {out}: exists and is not a kit (no kit.json); give a new folder")
    sources = [data / f"{stem}.gz" for stem in FASHION_FILES]
    absent = [p.name for p in sources if not p.is_file()]
    if absent:
        raise KitError(f"--data {data}: no {', '.join(absent)} (the four Fashion-MNIST idx .gz files; Debian's "
                       f"dataset-fashion-mnist puts them in {DEBIAN_FASHION})")  # fmt: skip
    packages = needed(pythons, also)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        (staging / FASHION).mkdir(parents=True)
        for src in sources:
            shutil.copyfile(src, staging / FASHION / src.name)
        within_limit(staging)  # before any download when the data alone is too much
        (staging / "wheels").mkdir()
        with tempfile.TemporaryDirectory(prefix="kit-") as scratch:
            download(packages, pythons, staging / "wheels", Path(scratch))
        lines = [requirement_line(n, p["version"], p["pythons"], pythons) for n, p in packages.items()]
        (staging / "requirements.txt").write_text("".join(f"{line}\n" for line in lines))
        files = within_limit(staging)
        meta = {"pythons": pythons, "platform": PLATFORM, "machine": "x86_64", "host": sorted(HOST),
                "host_needs": host_needs(packages, pythons), "packages": packages, "files": files,
                "bytes": size(files), "digest": digest(files)}  # fmt: skip
        (staging / "kit.json").write_text(json.dumps(meta, indent=1) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return meta


def size(files: dict[str, dict[str, Any]], under: str = "") -> int:
    """Bytes of the kit's files whose path starts with `under`."""
    return sum(f["bytes"] for k, f in files.items() if k.startswith(under))


def within_limit(staging: Path) -> dict[str, dict[str, Any]]:
    """The facts of the files written so far; KitError when they are over `LIMIT` already."""
    files = file_facts(staging)
    if size(files) > LIMIT:
        raise KitError(f"the kit would be {size(files) / 2**20:.1f} MiB (wheels {size(files, 'wheels/') / 2**20:.1f} "
                       f"MiB) or more, over the {LIMIT / 2**20:.0f} MiB that fit beside the checkout in the host's "
                       f"64 MiB")  # fmt: skip
    return files


def shown(path: Path) -> str:
    """`path` as typed from the checkout root when it lies inside it."""
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.kit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--out", type=Path, default=OUT, help="the kit folder (default results/gpu-kit)")
    p.add_argument("--data", type=Path, default=DEBIAN_FASHION, help="Fashion-MNIST's idx .gz files (default Debian's)")
    p.add_argument("--pythons", nargs="+", default=list(PYTHONS), help="the host Pythons to cover (default all three)")
    p.add_argument("--also", nargs="+", default=[], metavar="NAME", help="carry these too, though the host should "
                   "have them (what kit_install found missing there)")  # fmt: skip
    a = p.parse_args(argv)
    out = Path(os.path.abspath(a.out))
    try:
        meta = build(out, Path(os.path.abspath(a.data)), a.pythons, a.also)
    except KitError as err:
        print(f"kit: {err}", file=sys.stderr)
        return 2
    wheels = sum(f["bytes"] for k, f in meta["files"].items() if k.startswith("wheels/"))
    print(
        f"kit: {shown(out)}, {meta['bytes'] / 2**20:.1f} MiB: {len(meta['packages'])} packages in "
        f"{wheels / 2**20:.1f} MiB of wheels for Python {', '.join(meta['pythons'])}, and Fashion-MNIST"
    )
    print("carry it with the checkout; on the GPU host, from the checkout root:")
    print(f"    python3 -m benchmarks.gpu_check --kit {shown(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

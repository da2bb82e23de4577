"""The GPU kit (issue 20): built for three Pythons, installed with pip and without, and the harness sweeping from it
on a Python that has only the GPU host's packages (`tests/_support/gpu_host.py`)."""

from __future__ import annotations

import ast
import contextlib
import io
import json
import re
import shutil
import sqlite3
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from ablations.datafiles import DEBIAN_FASHION, FASHION_FILES
from benchmarks import kit, kit_install
from benchmarks.kit_install import MARKER, KitError
from tests._support import gpu_host
from tests._support.configs import write_spec
from tests._support.processes import ENV, ROOT

RUNNING = f"{sys.version_info[0]}.{sys.version_info[1]}"
KIT_MODULES = ("mlflow", "optuna", "pydantic", "sqlalchemy", "alembic")  # what the host lacks, imported by name

pytestmark = pytest.mark.skipif(
    not (DEBIAN_FASHION / "train-images-idx3-ubyte.gz").is_file(), reason="no Debian Fashion-MNIST (make data)"
)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """`python -m benchmarks.kit --out DIR` for the three Pythons (in this process): the folder and what it printed."""
    out = tmp_path_factory.mktemp("kit") / "gpu-kit"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert kit.main(["--out", str(out)]) == 0
    return out, printed.getvalue()


@pytest.fixture(scope="module")
def meta(built):
    return json.loads((built[0] / "kit.json").read_text())


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """The executable of a Python with only the GPU host's packages (and no pip)."""
    return gpu_host.python(tmp_path_factory.mktemp("host") / "py")


@pytest.fixture(scope="module")
def site(built, tmp_path_factory):
    """The kit installed with pip (this environment's) into a new folder."""
    if RUNNING not in kit.PYTHONS:
        pytest.skip(f"the kit covers Python {', '.join(kit.PYTHONS)}, not this {RUNNING}")
    return kit_install.install(built[0], tmp_path_factory.mktemp("site") / "site")


def on_host(*front: Path) -> dict[str, str]:
    """The environment of a command on the host Python: `front` (the kit's folder) then the checkout on PYTHONPATH."""
    return {**ENV, "PYTHONPATH": ":".join(map(str, (*front, ROOT)))}


def run(python: Path, args: list[str], env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run([str(python), *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.kit
def test_the_kit_pins_what_the_host_lacks_for_three_pythons(built, meta):
    out, printed = built
    assert meta["pythons"] == list(kit.PYTHONS) and meta["bytes"] <= kit.LIMIT
    packages = meta["packages"]
    assert {"mlflow-skinny", "optuna", "pydantic", "pydantic-core", "sqlalchemy", "alembic", "mako"} <= set(packages)
    assert not {"mlflow", "mlflow-tracing", "flask", "torch", "numpy", "pytest", "pytest-timeout"} & set(packages)
    for name, package in packages.items():  # the versions the tests here ran against, on every Python
        assert package["version"] == metadata.version(name) and set(package["wheels"]) == set(kit.PYTHONS)
    cores = [packages["pydantic-core"]["wheels"][py] for py in kit.PYTHONS]
    assert [c.split("-")[2] for c in cores] == ["cp311", "cp312", "cp313"]
    assert len(set(packages["sqlalchemy"]["wheels"].values())) == 1  # one pure wheel for all three
    wheels = sorted(p.name for p in (out / "wheels").iterdir())
    assert wheels == sorted({w for p in packages.values() for w in p["wheels"].values()})
    assert sorted(p.name for p in (out / "fashion-mnist").iterdir()) == sorted(f"{s}.gz" for s in FASHION_FILES)
    lines = (out / "requirements.txt").read_text().splitlines()
    assert lines == [f"{name}=={p['version']}" for name, p in packages.items()]  # all needed on all three
    assert kit.file_facts(out) == meta["files"] and kit.digest(meta["files"]) == meta["digest"]
    assert meta["bytes"] == sum(p.stat().st_size for p in out.rglob("*") if p.is_file() and p.name != "kit.json")
    for python in kit.PYTHONS:  # what the kit leaves to the host, some of it only through timm's huggingface-hub
        assert {"click", "anyio", "h11", "idna", "typing-extensions", "pyyaml"} <= set(meta["host_needs"][python])
        assert not set(meta["host_needs"][python]) & set(packages)
    assert printed.splitlines()[-1].strip() == f"python3 -m benchmarks.gpu_check --kit {out}"
    assert f"{meta['bytes'] / 2**20:.1f} MiB" in printed


@pytest.mark.parametrize("python", kit.PYTHONS)
@pytest.mark.kit
def test_pip_installs_from_the_kit_the_wheels_its_manifest_names_for_each_python(built, meta, python, tmp_path):
    """requirements.txt resolved by pip for each Python against wheels/ alone picks what kit.json (and so the
    unpacking fallback) names."""
    out = built[0]
    report = tmp_path / "report.json"
    subprocess.run([sys.executable, "-m", "pip", "install", "--isolated", "--dry-run", "--ignore-installed", "-q",
                    "--report", str(report), "--no-index", "--find-links", str(out / "wheels"), "--no-deps",
                    "--only-binary=:all:", "--python-version", python, "--platform", kit.PLATFORM, "--target",
                    str(tmp_path / "t"), "-r", str(out / "requirements.txt")], check=True)  # fmt: skip
    picked = {Path(item["download_info"]["url"]).name for item in json.loads(report.read_text())["install"]}
    assert picked == {p["wheels"][python] for p in meta["packages"].values()}


@pytest.mark.kit
def test_the_host_python_without_the_kit_lacks_the_harness_packages(host, tmp_path):
    """The simulation is real: torch and the rest of the host's list are there, the kit's packages are not."""
    probe = "import importlib.util as u, json; print(json.dumps({m: bool(u.find_spec(m)) for m in %r}))"
    names = [*KIT_MODULES, "torch", "torchvision", "yaml", "rich", "timm", "pytest"]
    found = json.loads(run(host, ["-c", probe % names], on_host(), tmp_path))
    assert found == {m: m not in KIT_MODULES for m in names}


@pytest.mark.kit
def test_the_harness_imports_its_packages_from_the_kit(host, site, tmp_path):
    probe = (
        "import importlib, json, sys; import mlflow.version as v\n"
        "files = {m: importlib.import_module(m).__file__ for m in sys.argv[1:]}\n"
        "print(json.dumps({'files': files, 'skinny': v.IS_MLFLOW_SKINNY}))"
    )
    modules = [*KIT_MODULES, "torch", "ablations.tracking", "benchmarks.harness", "benchmarks.run"]
    seen = json.loads(run(host, ["-c", probe, *modules], on_host(site), tmp_path))
    assert seen["skinny"]
    for m in KIT_MODULES:
        assert Path(seen["files"][m]).is_relative_to(site), seen["files"][m]
    assert Path(seen["files"]["torch"]).is_relative_to(host.parent.parent)  # the host's own
    assert Path(seen["files"]["benchmarks.harness"]).is_relative_to(ROOT)


@pytest.mark.kit
def test_a_sweep_on_the_host_python_trains_and_records_to_mlflow(host, site, tmp_path):
    spec = write_spec(tmp_path, grid={"se.excitation": ["sigmoid"]}, seeds=1)  # one trial of the tiny study
    env, results = on_host(site), tmp_path / "results"
    run(host, ["-m", "ablations.cli", "sweep", str(spec), "--results", str(results), "--no-progress"], env, tmp_path)
    with sqlite3.connect(results / "mlflow.db") as db:
        runs = db.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall()
        finals = db.execute("SELECT COUNT(*) FROM metrics WHERE key = 'test/top1_err'").fetchone()[0]
        version = db.execute("SELECT DISTINCT value FROM tags WHERE key = 'senet.mlflow'").fetchall()
    assert runs == [("FINISHED", 2)] and finals == 1  # the study's parent run and its trial
    assert version == [(metadata.version("mlflow-skinny"),)]


@pytest.mark.kit
def test_pytest_on_the_host_python_collects_the_gpu_tests(host, site):
    """`python -m pytest -m gpu tests` imports every test module: none may need a package the host lacks."""
    args = [str(host), "-m", "pytest", "--collect-only", "-q", "-m", "gpu", "tests", "-p", "no:cacheprovider"]
    done = subprocess.run(args, cwd=ROOT, env=on_host(site), capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "tests/gpu/test_cuda.py::" in done.stdout and " error" not in done.stdout.splitlines()[-1]


def files_of(folder: Path) -> set[str]:
    """What an install put in `folder`, but what only pip writes (console scripts, its own records of itself)."""
    mine = {"INSTALLER", "REQUESTED", "direct_url.json", MARKER}
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")
            if p.is_file() and p.name not in mine and p.relative_to(folder).parts[0] != "bin"}  # fmt: skip


@pytest.mark.kit
def test_a_python_without_pip_gets_the_same_files_unpacked(built, host, site, tmp_path):
    unpacked = kit_install.install(built[0], tmp_path / "site", python=str(host))
    assert files_of(unpacked) == files_of(site)
    assert (next(unpacked.glob("mlflow_skinny-*.dist-info")) / "INSTALLER").read_text() == "senet-ablate-kit\n"
    assert (next(site.glob("mlflow_skinny-*.dist-info")) / "INSTALLER").read_text().strip() == "pip"


@pytest.mark.parametrize("python", [p for p in kit.PYTHONS if p != RUNNING])
@pytest.mark.kit
def test_the_compiled_wheels_load_on_the_other_pythons(built, host, python, tmp_path, monkeypatch):
    """Unpacked for Python 3.12 or 3.13 (where this machine has one), pydantic-core, cffi and cryptography load and
    work there, from the kit; the host's pure typing_extensions comes from the host Python's folder."""
    exe = gpu_host.interpreter(python)
    if exe is None:
        pytest.skip(f"no Python {python} on this machine")
    bare = tmp_path / "py"
    subprocess.run([exe, "-m", "venv", "--without-pip", str(bare)], check=True)
    monkeypatch.setenv("PYTHONPATH", str(gpu_host.site_packages(host.parent.parent)))  # what the kit needs of a host
    target = kit_install.install(built[0], tmp_path / "site", python=str(bare / "bin" / "python"))
    probe = (
        "import json, pydantic, sqlalchemy, _cffi_backend, pydantic_core._pydantic_core as core\n"
        "from cryptography.hazmat.bindings._rust import openssl\n"
        "class P(pydantic.BaseModel):\n    n: int\n"
        "rows = sqlalchemy.create_engine('sqlite://').connect().execute(sqlalchemy.text('select 41 + 1')).all()\n"
        "print(json.dumps([P(n='7').n, rows[0][0], core.__file__, _cffi_backend.__file__, openssl.__name__]))"
    )
    env = {**ENV, "PYTHONPATH": f"{target}:{gpu_host.site_packages(host.parent.parent)}"}
    n, answer, core, cffi, _ = json.loads(run(bare / "bin" / "python", ["-S", "-c", probe], env, tmp_path))
    tag = f"cpython-{python.replace('.', '')}-x86_64-linux-gnu.so"
    assert (n, answer) == (7, 42) and core.endswith(tag) and cffi.endswith(tag)
    assert Path(core).is_relative_to(target)


def copy_of(kit_dir: Path, dest: Path) -> Path:
    shutil.copytree(kit_dir, dest, ignore=shutil.ignore_patterns("site"))
    return dest


@pytest.mark.kit
def test_installing_again_is_a_no_op_until_the_kit_changes(built, host, tmp_path):
    k = copy_of(built[0], tmp_path / "kit")
    target = kit_install.install(k, python=str(host))  # default: KIT/site
    assert target == k / "site" and (target / "optuna").is_dir()
    (target / "left-by-the-first").write_text("")
    assert kit_install.install(k, python=str(host)) == target and (target / "left-by-the-first").exists()
    manifest = json.loads((k / "kit.json").read_text())
    manifest["digest"] = "0" * 64  # another kit in the same folder
    (k / "kit.json").write_text(json.dumps(manifest))
    assert kit_install.install(k, python=str(host)) == target and not (target / "left-by-the-first").exists()
    assert json.loads((target / MARKER).read_text()) == {"digest": "0" * 64, "python": RUNNING}
    assert not (tmp_path / "kit" / ".site.partial").exists()


@pytest.mark.kit
def test_install_refuses_a_foreign_folder_a_damaged_kit_and_another_python(built, host, tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("")
    with pytest.raises(KitError, match=f"^{foreign}: holds files the kit did not install"):
        kit_install.install(built[0], foreign, python=str(host))
    k = copy_of(built[0], tmp_path / "kit")
    wheel = next((k / "wheels").glob("optuna-*.whl"))
    wheel.write_bytes(wheel.read_bytes()[:-10])
    with pytest.raises(KitError, match=f"^{wheel}: damaged"):
        kit_install.install(k, python=str(host))
    manifest = json.loads((k / "kit.json").read_text())
    (k / "kit.json").write_text(json.dumps({**manifest, "pythons": ["3.99"]}))
    with pytest.raises(KitError, match=f"the kit is for Python 3.99 on linux x86_64, not {RUNNING}"):
        kit_install.install(k, python=str(host))
    with pytest.raises(KitError, match=f"^{tmp_path / 'none' / 'kit.json'}: no kit here"):
        kit_install.install(tmp_path / "none")


@pytest.mark.kit
def test_a_host_without_what_the_kit_leaves_to_it_is_told_what_to_carry_too(built, host, tmp_path):
    """A host whose packages do not bring, say, click (an older timm) hears so before anything runs."""
    k = copy_of(built[0], tmp_path / "kit")
    manifest = json.loads((k / "kit.json").read_text())
    manifest["host_needs"][RUNNING] += ["click-from-elsewhere"]
    (k / "kit.json").write_text(json.dumps(manifest))
    with pytest.raises(KitError, match=f"{host} lacks click-from-elsewhere, .* --also click-from-elsewhere$"):
        kit_install.install(k, python=str(host))
    assert not (k / "site").exists()


@pytest.mark.kit
def test_fashion_is_the_kits_checked_data_folder(built, tmp_path):
    assert kit_install.fashion(built[0]) == built[0] / "fashion-mnist"
    k = copy_of(built[0], tmp_path / "kit")
    (k / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(KitError, match="t10k-labels-idx1-ubyte.gz: missing from the kit"):
        kit_install.fashion(k)


def test_a_kit_over_the_limit_is_refused_in_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(kit, "LIMIT", 2**20)  # Fashion-MNIST alone is 30 MiB: refused before any download
    assert kit.main(["--out", str(tmp_path / "k")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.match(r"kit: the kit would be 29\.\d MiB .* over the 1 MiB", err)
    assert not any(tmp_path.iterdir())  # neither the kit nor its partial folder


def test_missing_fashion_files_name_the_folder(tmp_path, capsys):
    assert kit.main(["--out", str(tmp_path / "k"), "--data", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"kit: --data {tmp_path}: no train-images-idx3-ubyte.gz")


def test_a_package_needed_on_some_pythons_only_gets_a_marker():
    assert kit.requirement_line("optuna", "5.0.0", ["3.11", "3.12", "3.13"], kit.PYTHONS) == "optuna==5.0.0"
    assert kit.requirement_line("tomli", "2.2.1", ["3.11", "3.12"], kit.PYTHONS) == (
        'tomli==2.2.1; python_version == "3.11" or python_version == "3.12"'
    )


def test_the_closure_follows_markers_and_a_need_not_installed_here_is_refused(monkeypatch):
    """alembic needs tomli before Python 3.11 only; tomli is not installed here, so it cannot be pinned."""
    assert kit.closure(["alembic"], "3.10")["tomli"] is None and "tomli" not in kit.closure(["alembic"], "3.11")
    monkeypatch.setattr(kit, "roots", lambda: ["alembic"])
    monkeypatch.setattr(kit, "HOST", ("pyyaml",))
    assert set(kit.needed(["3.11"])) == {"alembic", "mako", "markupsafe", "sqlalchemy", "typing-extensions"}
    with pytest.raises(KitError, match="^tomli is needed on Python 3.10 and not installed here"):
        kit.needed(["3.10"])
    assert set(kit.needed(["3.11"], also=["PyYAML"])) == {"alembic", "mako", "markupsafe", "sqlalchemy",
                                                           "typing-extensions", "pyyaml"}  # fmt: skip


def test_the_roots_are_the_projects_requirements_with_mlflow_skinny():
    names = [r.split(">")[0].split("=")[0] for r in kit.roots()]
    assert "mlflow-skinny" in names and "mlflow" not in names and {"optuna", "pydantic", "torch"} <= set(names)


def test_kit_install_imports_only_the_standard_library():
    """It runs on the host before anything of the kit is installed."""
    tree = ast.parse(Path(kit_install.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported - {"__future__"} <= set(sys.stdlib_module_names)


@pytest.mark.kit
def test_the_check_installs_the_kit_and_runs_its_steps_on_the_host_python(built, host, tmp_path):
    """`python3 -m benchmarks.gpu_check --kit KIT` as the host runs it, its GPU steps left out: the kit installed by
    the check's own first step, the facts step run by the host's Python from that install, both recorded."""
    kit_dir = tmp_path / "gpu-kit"
    shutil.copytree(built[0], kit_dir)
    out = tmp_path / "check"
    gpu_steps = [
        "tests",
        "throughput",
        "se-overhead",
        "imagenet-data",
        "sweep-packed",
        "report",
        "sweep-single",
        "harness",
    ]
    done = subprocess.run([str(host), "-m", "benchmarks.gpu_check", "--kit", str(kit_dir), "--out", str(out),
                           "--results-md", str(tmp_path / "RESULTS.md"), "--skip", *gpu_steps], cwd=ROOT,
                          env={**ENV, "PYTHONPATH": ""}, capture_output=True, text=True)  # fmt: skip
    summary = json.loads((out / "gpu-check.json").read_text())
    steps = {s["name"]: s for s in summary["steps"]}
    assert list(steps) == ["install", "facts"], done.stdout + done.stderr
    assert steps["install"]["status"] == "passed" and (kit_dir / "site" / MARKER).is_file()
    facts = steps["facts"]["results"]
    assert (
        facts["python"].startswith(RUNNING + ".") and facts["cuda_available"] is False
    )  # no GPU here: the step says so
    assert steps["facts"]["status"] == "failed" and done.returncode == 1  # ... and the check does not pass
    assert "| environment facts | failed |" in (tmp_path / "RESULTS.md").read_text()

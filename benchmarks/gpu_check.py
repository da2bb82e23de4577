"""The GPU host's evidence in one call: `python3 -m benchmarks.gpu_check --kit results/gpu-kit` from the checkout.

Built for the tightest host we know (about ten minutes a command, no network, a Python with torch but without the
project's own extra packages, 64 MiB carried): it installs the kit that `make gpu-kit` wrote (pinned wheels and
Fashion-MNIST) into the kit's folder, then runs its steps, most valuable first, in at most `--budget` seconds
(default 8 minutes). Each step is a child process with its own time limit (a step that overruns is killed with its
children and marked timed out); a failing step never stops the later ones; each writes its results (JSON and
markdown) the moment it ends, and the summary (`gpu-check.json`, `gpu-check.md` and the cuda section of
benchmarks/RESULTS.md) is rewritten after every step, so a run cut off by the host keeps every step that finished.

This module imports only the standard library at the top: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks.kit_install import FASHION  # the kit's data folder (standard library only)

ROOT = Path(__file__).resolve().parent.parent
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
BUDGET_S = 480.0  # the whole check, the install included (a host call is about ten minutes, its start included)
MIN_STEP_S = 15.0  # with less than this left of the budget (or the step's own limit), a step is skipped
KILL_GRACE_S = 5.0  # after SIGTERM to an overrunning step's process group, before SIGKILL
PACKED_TARGET = 0.8  # the packed sweep's wall time / the same trials in one worker


@dataclass
class Step:
    """One step: a command run from the checkout with `limit_s` seconds, and what its files mean afterwards.

    `collect(folder)` reads what the command left in its folder (`$GPU_CHECK_STEP`) and returns a dict of results
    and a markdown section; it is called whatever the exit, and its own failure is recorded, never raised.
    """

    name: str
    title: str
    limit_s: float
    command: list[str]
    collect: Callable[[Path], tuple[dict, str]] | None = None


@dataclass
class Outcome:
    """How one step ended: `passed`, `failed` (exit code), `timed out`, or `skipped` (budget spent, with why)."""

    name: str
    title: str
    status: str
    seconds: float
    limit_s: float
    code: int | None = None
    detail: str = ""
    results: dict = field(default_factory=dict)
    markdown: str = ""


def _tail(path: Path, lines: int = 12) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_step(step: Step, folder: Path, limit_s: float, env: dict[str, str]) -> Outcome:
    """Run `step` with `limit_s` seconds; its output goes to `folder/log.txt`. Never raises for the step's sake."""
    folder.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    code: int | None = None
    with open(folder / "log.txt", "wb") as log:
        try:
            proc = subprocess.Popen(step.command, cwd=ROOT, env={**env, "GPU_CHECK_STEP": str(folder)},
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # fmt: skip
        except OSError as err:
            return Outcome(step.name, step.title, "failed", 0.0, limit_s, None, f"could not start: {err}")
        try:
            code = proc.wait(timeout=limit_s)
            status = "passed" if code == 0 else "failed"
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            status = "timed out"
    seconds = time.monotonic() - began
    outcome = Outcome(step.name, step.title, status, seconds, limit_s, code)
    if status != "passed":
        outcome.detail = _tail(folder / "log.txt")
    if step.collect is not None:
        try:
            outcome.results, outcome.markdown = step.collect(folder)
        except Exception as err:  # a step's files may be missing or torn after a kill: say so, go on
            outcome.results = {"collect_error": f"{type(err).__name__}: {err}"}
    return outcome


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the step's whole process group (its workers too), SIGKILL after a grace period."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, KILL_GRACE_S)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_steps(
    steps: Sequence[Step],
    out: Path,
    env: dict[str, str],
    budget_s: float = BUDGET_S,
    on_step: Callable[[list[Outcome]], None] | None = None,
    log: Callable[[str], None] = print,
) -> list[Outcome]:
    """Every step in order within `budget_s` in all: each gets its own limit or what is left of the budget, a step
    is skipped once less than MIN_STEP_S (or its own limit) is left; `on_step(outcomes so far)` runs after each one."""
    deadline = time.monotonic() + budget_s
    outcomes: list[Outcome] = []
    for number, step in enumerate(steps, 1):
        left = deadline - time.monotonic()
        limit = min(step.limit_s, left)
        if left < min(MIN_STEP_S, step.limit_s):
            why = f"the check's {budget_s:.0f} s budget was spent ({max(left, 0):.0f} s left)"
            outcome = Outcome(step.name, step.title, "skipped", 0.0, step.limit_s, detail=why)
        else:
            log(f"== {number}/{len(steps)} {step.title} (limit {limit:.0f} s)\n$ {' '.join(step.command)}")
            outcome = run_step(step, out / f"{number:02d}-{step.name}", limit, env)
        log(f"== {step.name}: {outcome.status} after {outcome.seconds:.0f} s")
        outcomes.append(outcome)
        write_summary(out, outcomes, [s.name for s in steps[number:]])
        if on_step is not None:
            on_step(outcomes)
    return outcomes


def summary_line(outcomes: Sequence[Outcome], pending: Sequence[str] = ()) -> str:
    ran = [o for o in outcomes if o.status != "skipped"]
    parts = [f"{o.name} {o.status} ({o.seconds:.0f} s)" for o in outcomes]
    parts += [f"{name} not reached" for name in pending]
    return f"{len(ran)} of {len(outcomes) + len(pending)} steps ran: " + ", ".join(parts)


def write_summary(out: Path, outcomes: Sequence[Outcome], pending: Sequence[str] = ()) -> None:
    """`gpu-check.json` and `gpu-check.md` for the steps so far, each written whole (temporary file, rename)."""
    data = {"summary": summary_line(outcomes, pending), "steps": [asdict(o) for o in outcomes],
            "not_reached": list(pending)}  # fmt: skip
    _write(out / "gpu-check.json", json.dumps(data, indent=1))
    _write(out / "gpu-check.md", render(outcomes, pending))


def render(outcomes: Sequence[Outcome], pending: Sequence[str] = (), heading: str = "#") -> str:
    """The check's markdown: the summary table of every step, then each step's own section."""
    lines = [f"{heading} GPU check", "", summary_line(outcomes, pending) + ".", "",
             "| step | status | seconds | limit |", "|---|---|---|---|"]  # fmt: skip
    lines += [f"| {o.title} | {o.status} | {o.seconds:.0f} | {o.limit_s:.0f} |" for o in outcomes]
    lines += [f"| {name} | not reached | — | — |" for name in pending]
    for o in outcomes:
        lines += ["", f"{heading}# {o.title}", ""]
        if o.markdown:
            lines.append(o.markdown.strip())
        if o.status != "passed":
            lines.append(f"{o.status}" + (f", exit {o.code}" if o.code is not None else "") + ".")
            if o.detail:
                lines += ["", "```", o.detail, "```"]
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def results_section(outcomes: Sequence[Outcome], pending: Sequence[str] = ()) -> str:
    """The cuda section of benchmarks/RESULTS.md: whatever finished, with the steps that did not."""
    body = render(outcomes, pending, heading="##").replace("## GPU check", "## GPU (CUDA): the GPU kit's check", 1)
    return f"<!-- bench:cuda -->\n{body}<!-- /bench:cuda -->\n"


def write_results_md(path: Path, outcomes: Sequence[Outcome], pending: Sequence[str] = ()) -> None:
    """Replace the cuda section of `path`, keeping the others (the cpu one)."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    section = results_section(outcomes, pending)
    pattern = re.compile(r"<!-- bench:cuda -->.*?<!-- /bench:cuda -->\n?", re.DOTALL)
    text = (
        pattern.sub(lambda _: section, text, count=1) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    )
    _write(path, text)


# ---- the steps ---------------------------------------------------------------------------------------------------


def collect_json(name: str = "result.json") -> Callable[[Path], tuple[dict, str]]:
    """A step that writes `result.json` (and optionally `section.md`) into its folder."""

    def collect(folder: Path) -> tuple[dict, str]:
        data = json.loads((folder / name).read_text())
        section = folder / "section.md"
        return data, section.read_text() if section.exists() else ""

    return collect


def collect_bench(folder: Path) -> tuple[dict, str]:
    """A `benchmarks.run` step: its JSON, and its RESULTS.md section without the markers and the device heading."""
    data = json.loads((folder / "result.json").read_text())
    text = (folder / "RESULTS.md").read_text()
    found = re.search(r"<!-- bench:\w+ -->\n(.*?)<!-- /bench:\w+ -->", text, re.DOTALL)
    body = re.sub(r"^## .*\n", "", (found.group(1) if found else text).strip() + "\n", count=1, flags=re.MULTILINE)
    return data, re.sub(r"^### ", "#### ", body, flags=re.MULTILINE)


def collect_pytest(folder: Path) -> tuple[dict, str]:
    """Counts and failures from pytest's JUnit XML."""
    suite = ET.parse(folder / "junit.xml").getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    assert suite is not None
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    failed = [f"{case.get('classname')}::{case.get('name')}" for case in suite.iter("testcase")
              if case.find("failure") is not None or case.find("error") is not None]  # fmt: skip
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    text = f"{passed} passed, {counts['failures']} failed, {counts['errors']} errors, {counts['skipped']} skipped"
    return {**counts, "passed": passed, "failed": failed}, text + "".join(f"\n- failed: `{f}`" for f in failed)


def collect_sweep(folder: Path) -> tuple[dict, str]:
    """A sweep step's wall time, read from its own timing file."""
    data = json.loads((folder / "timing.json").read_text())
    return data, f"{data['trials']} trials, wall time {data['wall_s']:.1f} s ({data['how']})"


def steps_for(py: str, data: Path, out: Path, kit: Path | None) -> list[Step]:
    """The check's steps, most valuable first."""
    bench = [py, "-m", "benchmarks.run", "--device", "cuda", "--quick", "--harness", "none"]

    def bench_step(name: str, title: str, limit: float, only: str, *extra: str) -> Step:
        folder = "$GPU_CHECK_STEP"
        cmd = [*bench, "--only", only, *extra, "--out", f"{folder}/RESULTS.md", "--json", f"{folder}/result.json"]
        return Step(name, title, limit, _in_shell(cmd), collect_bench)

    sets = ["--set", f"data.root={data}"]
    sweep = [py, "-m", "benchmarks.gpu_check", "--time-sweep", "--", py, "-m", "ablations.cli", "sweep", "gpu_kit",
             "--gpus", "0", "--no-progress", *sets]  # fmt: skip
    steps = []
    if kit is not None:
        steps.append(Step("install", "install the kit's wheels", 90, [py, "-m", "benchmarks.kit_install", str(kit)]))
    steps += [
        Step("facts", "environment facts", 30, [py, "-m", "benchmarks.gpu_check", "--facts"], collect_json()),
        Step("tests", "the tests marked gpu", 150, _in_shell([py, "-m", "pytest", "-q", "-m", "gpu", "tests", "-p",
             "no:cacheprovider", "--junitxml=$GPU_CHECK_STEP/junit.xml"]), collect_pytest),  # fmt: skip
        bench_step("throughput", "engine images/s, eager and CUDA graphs, against timm", 110, "throughput"),
        bench_step("se-overhead", "SE overhead and ours against timm", 70, "se_overhead,timm"),
        bench_step("imagenet-data", "the ImageFolder path and a one-rank DDP step against a ResNet-50 step", 90,
                   "imagenet_data"),
        Step("sweep-packed", "the gpu_kit study packed on one GPU (--trials-per-gpu auto)", 100,
             [*sweep, "--results", str(out / "sweep-packed"), "--trials-per-gpu", "auto"], collect_sweep),
        Step("report", "the packed sweep's report", 40, [py, "-m", "ablations.cli", "report", "gpu_kit", *sets,
             "--results", str(out / "sweep-packed"), "--out", str(ROOT / "reports" / "gpu-kit")]),  # fmt: skip
        Step("sweep-single", "the same trials in one worker (--trials-per-gpu 1)", 100,
             [*sweep, "--results", str(out / "sweep-single"), "--trials-per-gpu", "1"], collect_sweep),
        bench_step("harness", "harness overhead on a short study", 90, "harness", "--harness", "gpu_kit",
                   "--harness-set", f"data.root={data}", "--harness-set", "train.epochs=1", "--harness-rounds", "1"),
    ]  # fmt: skip
    return steps


def _in_shell(cmd: list[str]) -> list[str]:
    """`cmd` run by sh, so that `$GPU_CHECK_STEP` in it becomes the step's folder."""
    return ["sh", "-c", " ".join(a if "$GPU_CHECK_STEP" in a else shlex.quote(a) for a in cmd)]


def packing_check(outcomes: Sequence[Outcome]) -> dict | None:
    """The packed sweep against the single worker, when both finished: wall ratio and the target."""
    walls = {o.name: o.results.get("wall_s") for o in outcomes if o.status == "passed"}
    packed, single = walls.get("sweep-packed"), walls.get("sweep-single")
    if not packed or not single:
        return None
    ratio = packed / single
    return {"ratio": ratio, "target": PACKED_TARGET, "met": ratio <= PACKED_TARGET}


def data_folder(given: Path | None, kit: Path | None = None) -> Path:
    """The Fashion-MNIST folder, absolute (the harness step runs from a temporary folder): --data, else the kit's,
    else Debian's."""
    if given is not None:
        return given.resolve()
    if kit is not None and (kit / FASHION).is_dir():
        return (kit / FASHION).resolve()
    return DEBIAN_FASHION


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--facts"]:
        from benchmarks._gpu_facts import write_facts

        return write_facts(Path(os.environ.get("GPU_CHECK_STEP", ".")))
    if argv[:1] == ["--time-sweep"]:
        return time_sweep(argv[2:] if argv[1:2] == ["--"] else argv[1:])
    p = argparse.ArgumentParser(prog="python3 -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--kit", type=Path, help="the folder `make gpu-kit` wrote (wheels and data); installed first")
    p.add_argument("--data", type=Path, help="Fashion-MNIST folder (the idx .gz files); default the kit's, Debian's")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "gpu-check", help="where each step's files go")
    p.add_argument("--budget", type=float, default=BUDGET_S, help=f"seconds for every step (default {BUDGET_S:.0f})")
    p.add_argument("--skip", nargs="*", default=[], help="step names to leave out")
    p.add_argument("--results-md", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    a = p.parse_args(argv)
    kit = a.kit.resolve() if a.kit else None
    if kit is not None and not (kit / "kit.json").exists():
        print(
            f"--kit: {kit} holds no kit.json; build it with `make gpu-kit` and carry results/gpu-kit", file=sys.stderr
        )
        return 2
    data = data_folder(a.data, kit)
    if not any((data / f"train-images-idx3-ubyte{ext}").exists() for ext in (".gz", "")):
        print(f"--data: Fashion-MNIST not found in {data}; give --data DIR or --kit KIT", file=sys.stderr)
        return 2
    out = a.out.resolve()
    site = [str(kit / "site")] if kit is not None else []
    from_env = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*site, str(ROOT), *from_env]), "PYTHONUNBUFFERED": "1",
           "MLFLOW_DISABLE_TELEMETRY": "true"}  # fmt: skip
    steps = [s for s in steps_for(sys.executable, data, out, kit) if s.name not in a.skip]

    def record(outcomes: list[Outcome]) -> None:
        pending = [s.name for s in steps[len(outcomes) :]]
        write_results_md(a.results_md, outcomes, pending)

    outcomes = run_steps(steps, out, env, a.budget, record)
    packing = packing_check(outcomes)
    if packing is not None:
        verdict = "met" if packing["met"] else "not met"
        print(f"packed / single-worker sweep wall time {packing['ratio']:.2f} (target ≤ {PACKED_TARGET}: {verdict})")
    print(f"\ngpu-check: {summary_line(outcomes)}\nresults: {out / 'gpu-check.md'}, {a.results_md}")
    return 0 if all(o.status == "passed" for o in outcomes) else 1


def time_sweep(cmd: list[str]) -> int:
    """Run a sweep command and write its wall time and trial count to the step's `timing.json`."""
    results = Path(cmd[cmd.index("--results") + 1])
    shutil.rmtree(results, ignore_errors=True)  # a timing, not a resume: an earlier check's trials would be skipped
    began = time.perf_counter()
    code = subprocess.call(cmd, cwd=ROOT)
    wall = time.perf_counter() - began
    how = next((cmd[i + 1] for i, a in enumerate(cmd) if a == "--trials-per-gpu"), "1")
    folder = Path(os.environ.get("GPU_CHECK_STEP", "."))
    trials = len(list((results / "runs").glob("*/result.json"))) if (results / "runs").is_dir() else 0
    _write(folder / "timing.json", json.dumps({"wall_s": wall, "exit": code, "trials": trials,
                                               "how": f"--trials-per-gpu {how}"}))  # fmt: skip
    return code


if __name__ == "__main__":
    sys.exit(main())

"""The GPU check on a host without a GPU: its set-up, and its step runner with stub steps in place of the GPU ones."""

import json
import os
import sys
import time
from pathlib import Path

import psutil
import pytest

from benchmarks import gpu_check
from benchmarks.gpu_check import Outcome, Step, collect_json, packing_check, run_steps, write_results_md


def test_a_relative_data_folder_is_made_absolute_before_any_step(tmp_path, monkeypatch):
    """Issue 20, item 5: the harness step runs from a temporary folder, where the README's relative --data was
    another folder."""
    monkeypatch.chdir(tmp_path)
    assert gpu_check.data_folder(Path("fashion")) == tmp_path / "fashion"


# ---- the step runner, with stub steps in place of the GPU ones (issue 20, part 1) --------------------------------


PY = sys.executable


def stub(name, code, limit=20.0, collect=None):
    return Step(name, f"stub {name}", limit, [PY, "-c", code], collect)


WRITES = (
    "import json, os, pathlib; d = pathlib.Path(os.environ['GPU_CHECK_STEP']);"
    "seen = json.loads((d.parent / 'gpu-check.json').read_text());"  # the summary of the steps before this one
    "(d / 'result.json').write_text(json.dumps({'images_per_s': 123, 'before': [s['status'] for s in seen['steps']]}));"
    "(d / 'section.md').write_text('123 images/s')"
)
# A step that hangs in a child it started: the whole process group must go when the limit is reached.
HANGS = (
    "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']);"
    "time.sleep(120)"
)


def test_a_hanging_step_is_killed_at_its_limit_a_failing_one_does_not_stop_the_rest_and_each_is_recorded(tmp_path):
    steps = [
        stub("hangs", HANGS, limit=2),
        stub("fails", "import sys; print('boom'); sys.exit(3)"),
        stub("works", WRITES, collect=collect_json()),
    ]
    seen = []
    began = time.monotonic()
    outcomes = run_steps(steps, tmp_path, dict(os.environ), budget_s=120, on_step=lambda o: seen.append(len(o)),
                         log=lambda _: None)  # fmt: skip
    assert time.monotonic() - began < 30  # the 120 s sleeps were cut at 2 s
    assert [o.status for o in outcomes] == ["timed out", "failed", "passed"]
    assert outcomes[0].seconds < 10 and outcomes[1].code == 3 and "boom" in outcomes[1].detail
    assert outcomes[2].results == {"images_per_s": 123, "before": ["timed out", "failed"]}  # written before it ran
    assert seen == [1, 2, 3]
    summary = json.loads((tmp_path / "gpu-check.json").read_text())
    assert [s["status"] for s in summary["steps"]] == ["timed out", "failed", "passed"]
    assert "3 of 3 steps ran" in summary["summary"]
    md = (tmp_path / "gpu-check.md").read_text()
    assert "| stub works | passed |" in md and "123 images/s" in md and "exit 3" in md
    sleepers = [p for p in psutil.process_iter(["cmdline"]) if "time.sleep(120)" in " ".join(p.info["cmdline"] or [])]
    assert not sleepers  # the hanging step's child went with it


def test_steps_beyond_the_budget_are_skipped_and_said_so(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "MIN_STEP_S", 1.0)
    steps = [stub("slow", "import time; time.sleep(60)", limit=60), stub("next", "pass")]
    outcomes = run_steps(steps, tmp_path, dict(os.environ), budget_s=3, log=lambda _: None)
    assert outcomes[0].status == "timed out" and 2 <= outcomes[0].limit_s <= 3  # the budget, not its own 60 s
    assert outcomes[1].status == "skipped" and "budget" in outcomes[1].detail


def test_a_step_whose_results_are_torn_is_recorded_with_the_reason(tmp_path):
    torn = "import os, pathlib; (pathlib.Path(os.environ['GPU_CHECK_STEP']) / 'result.json').write_text('{')"
    step = stub("torn", torn, collect=collect_json())
    [outcome] = run_steps([step], tmp_path, dict(os.environ), log=lambda _: None)
    assert outcome.status == "passed" and "JSONDecodeError" in outcome.results["collect_error"]


def test_the_cuda_section_of_results_md_holds_what_finished_and_keeps_the_cpu_section(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Benchmark results\n\n<!-- bench:cpu -->\n## CPU\ncpu numbers\n<!-- /bench:cpu -->\n")
    done = [Outcome("facts", "environment facts", "passed", 2.0, 30, 0, markdown="| GPU 0 | H200 |")]
    write_results_md(path, done, ["tests", "throughput"])
    text = path.read_text()
    assert "cpu numbers" in text and "| GPU 0 | H200 |" in text and "| tests | not reached |" in text
    write_results_md(path, [*done, Outcome("tests", "gpu tests", "failed", 9.0, 150, 1)], ["throughput"])
    text = path.read_text()
    assert text.count("<!-- bench:cuda -->") == 1 and "| gpu tests | failed |" in text and "cpu numbers" in text


def test_the_packed_sweep_is_judged_against_the_single_worker_only_when_both_finished():
    def sweep(name, wall, status="passed"):
        return Outcome(name, name, status, wall, 100, 0, results={"wall_s": wall})

    assert packing_check([sweep("sweep-packed", 40)]) is None
    assert packing_check([sweep("sweep-packed", 40), sweep("sweep-single", 80, "timed out")]) is None
    judged = packing_check([sweep("sweep-packed", 40), sweep("sweep-single", 80)])
    assert judged == {"ratio": 0.5, "target": 0.8, "met": True}


@pytest.mark.e2e
def test_a_timed_sweep_starts_afresh_and_records_its_wall_time_and_trials(tmp_path, monkeypatch):
    from tests._support.configs import write_spec

    spec = write_spec(tmp_path)  # 4 tiny CPU trials
    results = tmp_path / "r"
    (results / "runs" / "stale").mkdir(parents=True)
    (results / "runs" / "stale" / "result.json").write_text("{}")  # an earlier check's: must not count
    monkeypatch.setenv("GPU_CHECK_STEP", str(tmp_path / "step"))
    monkeypatch.setenv("PYTHONPATH", str(gpu_check.ROOT))
    cmd = [PY, "-m", "ablations.cli", "sweep", str(spec), "--results", str(results), "--no-progress"]
    assert gpu_check.main(["--time-sweep", "--", *cmd]) == 0
    timing = json.loads((tmp_path / "step" / "timing.json").read_text())
    assert timing["trials"] == 4 and timing["exit"] == 0 and timing["wall_s"] > 0
    assert timing["how"] == "--trials-per-gpu 1"


def test_a_kit_folder_without_its_manifest_is_one_line_and_exit_2(tmp_path, capsys):
    assert gpu_check.main(["--kit", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("--kit:") and "kit.json" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()

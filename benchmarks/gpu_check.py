"""`make gpu-check`: everything a first GPU host should prove, in one command and under 10 minutes.

1. the tests marked `gpu` (CUDA training, bf16 + channels_last, torch.compile and CUDA graphs, out-of-memory
   classification, GPU permits);
2. `python -m benchmarks.run --device cuda` (SE overhead eager and compiled, ours against timm, the data
   pipeline, the harness overhead on the study below), which writes the cuda section of benchmarks/RESULTS.md;
3. the `gpu_check` study, packed on the GPU (`--trials-per-gpu auto`) on real Fashion-MNIST, then its report
   under reports/gpu-check/.

Run it from the checkout (`PYTHONPATH=.`); Fashion-MNIST comes from Debian's folder, or `--data DIR`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from ablations.paths import with_python_path

ROOT = Path(__file__).resolve().parent.parent
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


def step(title: str, cmd: list[str], env: dict[str, str]) -> float:
    print(f"\n== {title}\n$ {' '.join(cmd)}", flush=True)
    began = time.perf_counter()
    code = subprocess.call(cmd, cwd=ROOT, env=env)
    seconds = time.perf_counter() - began
    print(f"== {title}: exit {code} after {seconds:.0f} s", flush=True)
    if code != 0:
        raise SystemExit(code)
    return seconds


def data_folder(given: Path | None) -> Path:
    """The Fashion-MNIST folder, absolute: the harness step runs from a temporary folder."""
    return (given or DEBIAN_FASHION).resolve()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__)
    p.add_argument("--data", type=Path, help="Fashion-MNIST folder (the idx .gz files); default Debian's")
    p.add_argument("--results", type=Path, default=ROOT / "results" / "gpu-check")
    p.add_argument("--skip", nargs="*", default=[], choices=["tests", "bench", "sweep"], help="steps to leave out")
    a = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device is visible; run it on a GPU host", file=sys.stderr)
        return 2
    data = data_folder(a.data)
    if not (data / "train-images-idx3-ubyte.gz").exists() and not (data / "train-images-idx3-ubyte").exists():
        print(f"gpu-check: Fashion-MNIST not found in {data}; give --data DIR (see README, GPU hosts)", file=sys.stderr)
        return 2
    env = {**with_python_path(dict(os.environ), ROOT), "PYTHONUNBUFFERED": "1"}
    py = sys.executable
    root = ["--set", f"data.root={data}"]
    times = {}
    if "tests" not in a.skip:
        times["tests"] = step("tests marked gpu", [py, "-m", "pytest", "-q", "-m", "gpu", "tests"], env)
    if "bench" not in a.skip:
        times["bench"] = step("benchmarks", [py, "-m", "benchmarks.run", "--device", "cuda", "--harness", "gpu_check",
                                             "--harness-set", f"data.root={data}"], env)  # fmt: skip
    if "sweep" not in a.skip:
        common = ["--results", str(a.results), *root]
        times["sweep"] = step("packed sweep on Fashion-MNIST", [py, "-m", "ablations.cli", "sweep", "gpu_check",
                                                                "--gpus", "0", "--trials-per-gpu", "auto",
                                                                "--no-progress", *common], env)  # fmt: skip
        times["report"] = step("report", [py, "-m", "ablations.cli", "report", "gpu_check", *common, "--out",
                                          str(ROOT / "reports" / "gpu-check")], env)  # fmt: skip
    print("\ngpu-check done: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The GPU check's first step: what the host is (GPU, driver, CUDA, cuDNN, torch, Python, cores, MIG and compute
mode, the visible devices), written to the step's folder as `result.json` and `section.md`."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from pathlib import Path

QUERY = "name,driver_version,memory.total,compute_mode,mig.mode.current,power.limit,clocks.max.sm"


def nvidia_smi() -> list[dict[str, str]]:
    """One dict per GPU from `nvidia-smi --query-gpu`, or an empty list without the tool."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={QUERY}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20, check=True).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return []
    keys = QUERY.split(",")
    return [dict(zip(keys, (v.strip() for v in line.split(",")), strict=False)) for line in out.splitlines() if line]


def facts() -> dict[str, object]:
    import torch

    cuda = torch.cuda.is_available()
    found: dict[str, object] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "cores": os.cpu_count(),
        "affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "cuda_available": cuda,
        "devices": [],
        "nvidia_smi": nvidia_smi(),
    }
    for i in range(torch.cuda.device_count() if cuda else 0):
        props = torch.cuda.get_device_properties(i)
        free, total = torch.cuda.mem_get_info(i)
        found["devices"].append({  # type: ignore[union-attr]
            "name": props.name, "capability": f"{props.major}.{props.minor}", "memory_mb": total / 2**20,
            "free_mb": free / 2**20, "multiprocessors": props.multi_processor_count,
            "bf16": torch.cuda.is_bf16_supported(),
        })  # fmt: skip
    return found


def markdown(found: dict[str, object]) -> str:
    rows = [("Python", found["python"]), ("torch", f"{found['torch']} (CUDA {found['cuda_runtime']}, cuDNN "
            f"{found['cudnn']})"), ("cores", f"{found['cores']} (this process may use {found['affinity_cores']})"),
            ("CUDA_VISIBLE_DEVICES", found["CUDA_VISIBLE_DEVICES"] or "not set")]  # fmt: skip
    for i, d in enumerate(found["devices"]):  # type: ignore[arg-type]
        rows.append((f"GPU {i}", f"{d['name']}, compute capability {d['capability']}, {d['memory_mb']:,.0f} MB "
                     f"({d['free_mb']:,.0f} free), {d['multiprocessors']} SMs, bf16 {d['bf16']}"))  # fmt: skip
    for i, g in enumerate(found["nvidia_smi"]):  # type: ignore[arg-type]
        rows.append((f"nvidia-smi {i}", ", ".join(f"{k} {v}" for k, v in g.items())))
    if not found["cuda_available"]:
        rows.append(("CUDA", "no CUDA device visible"))
    return "\n".join(["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])


def write_facts(folder: Path) -> int:
    found = facts()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "result.json").write_text(json.dumps(found, indent=1))
    (folder / "section.md").write_text(markdown(found) + "\n")
    print(markdown(found))
    return 0 if found["cuda_available"] else 1

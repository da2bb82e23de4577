"""One trial across `train.devices` devices on this host: a DDP group started with torch's elastic launcher (what
`torchrun` runs), one process per device, NCCL between GPUs and gloo on the CPU.

The process that calls `train_ddp` (a sweep's worker, which holds the attempt's lease and heartbeats for it) is the
group's agent; it trains nothing itself. Rank 0 checkpoints and writes the result as a single-device run does; what
the worker's callbacks need crosses a folder beside the checkpoint (`ddp/`): rank 0 appends its start, epochs and
log lines to `events.jsonl` and its step counts to `progress.json`, asks before every save (`save-<epoch>.ask`,
answered `.ok` once the callbacks allowed it, or `stop`), and every rank pauses at the same step once the agent
puts `pause` there. Any rank's death ends the attempt (the launcher stops the others): the worker records it as a
crash, and the next attempt resumes from rank 0's last checkpoint with the same world size.

A group larger than one node (`ablations.training.nodes`): the leader node's worker starts it the same way with a
static rendezvous it hosts, and publishes each launch for the other nodes, whose tasks join it (`follow_group`).

Stops reach the ranks only through the channel: a rank ignores SIGTERM and SIGUSR2 (a scheduler signals every
process of a job at once; the worker pauses the whole group at one step instead), and dies with its agent.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import psutil
import torch

from ablations.config import RunConfig
from ablations.errors import SenetError
from ablations.training import group
from ablations.training.ends import Paused
from ablations.training.engine import Warm, pick_device, train
from ablations.training.nodes import Nodes
from ablations.training.result import RunResult
from ablations.training.steps import Progress

CHANNEL = "ddp"
POLL_S = 0.05  # how often the agent and rank 0 look at the channel
PROGRESS_S = 0.5  # how often rank 0 writes its step counts
AGREE_EVERY = 8  # steps between the ranks' agreements on a pause (one all-reduce each)
GROUP_TIMEOUT = timedelta(minutes=30)  # a collective waits this long for a rank (rank 0 evaluates meanwhile)
JOIN_TIMEOUT_S = 600  # the nodes of a group wait this long for each other at its start
SHUTDOWN_S = 5  # a failed group's ranks get SIGKILL this long after the launcher's SIGTERM (which they ignore)


class GroupFailed(RuntimeError):
    """A rank of the group died or failed: the attempt ends as a crash, and the next one resumes."""


class _Stopped(Exception):
    """The agent answered a save with `stop` (the lease was lost, a callback failed): rank 0 ends, unsaved."""


def _threads(world: int) -> int:
    """CPU threads per rank: the worker's share (OMP_NUM_THREADS) split over its node's ranks, at least one each."""
    share = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
    return max(1, share // world)


def _die_with_parent() -> None:
    """SIGKILL this rank when the process that started it goes (a worker killed with -9 leaves no rank behind)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class _RankBridge:
    """A rank's side of the channel: the engine's callback on every rank (only rank 0 reports and asks)."""

    def __init__(self, channel: Path, progress: Progress) -> None:
        self.channel, self.progress, self.asked = channel, progress, 0
        self.main = group.main()
        self.done = threading.Event()
        if self.main:
            threading.Thread(target=self._report_progress, daemon=True).start()

    def _event(self, **event: Any) -> None:
        with open(self.channel / "events.jsonl", "a") as f:
            f.write(json.dumps(event, default=str) + "\n")

    def _report_progress(self) -> None:
        while not self.done.wait(PROGRESS_S):
            p = self.progress
            tmp = self.channel / ".progress.tmp"
            tmp.write_text(json.dumps({"steps": p.steps, "batch": p.batch, "batches": p.batches}))
            tmp.replace(self.channel / "progress.json")

    def log(self, text: str) -> None:
        if self.main:
            self._event(log=text)
        else:
            print(f"rank {group.rank()}: {text}", flush=True)

    def on_start(self, info: dict[str, Any]) -> None:
        if self.main:
            self._event(start=info | {"devices": group.world()})

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        if self.main:
            self._event(epoch=epoch, metrics=metrics)

    def before_save(self, epoch: int) -> None:
        if not self.main:
            return
        (self.channel / f"save-{epoch}.ask").touch()
        while not (self.channel / f"save-{epoch}.ok").exists():
            if (self.channel / "stop").exists():
                raise _Stopped
            time.sleep(POLL_S)
        (self.channel / f"save-{epoch}.ok").unlink()

    def pause_requested(self) -> bool:
        self.asked += 1
        if self.asked % AGREE_EVERY:
            return False
        flag = self.main and any((self.channel / name).exists() for name in ("pause", "stop"))
        return group.agree(flag)

    def on_end(self, result: RunResult) -> None:
        self.done.set()


def _rank_main(tree: dict[str, Any], run_dir: str, cuda: bool) -> dict[str, Any]:
    """One rank of the group (the launcher's entry point, in a fresh process): train, return how it ended."""
    import torch.distributed as dist

    _die_with_parent()
    for stop in (signal.SIGTERM, signal.SIGUSR2):  # the worker pauses the group; the launcher's SIGKILL still ends it
        signal.signal(stop, signal.SIG_IGN)
    torch.set_num_threads(_threads(int(os.environ["LOCAL_WORLD_SIZE"])))
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=GROUP_TIMEOUT)
    bridge = _RankBridge(Path(run_dir) / CHANNEL, Progress())
    try:
        result = train(RunConfig.model_validate(tree), Path(run_dir), [bridge], bridge.log, None, bridge.progress)
        return {"result": asdict(result)} if group.main() else {}
    except Paused as paused:
        return {"paused": [paused.epoch, paused.step]}
    except SenetError as err:
        return {"error": str(err)}
    except _Stopped:
        return {"stopped": True}
    finally:
        bridge.done.set()
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


class _AgentBridge:
    """The agent's side: rank 0's events to the worker's callbacks, saves allowed or refused, pauses passed on."""

    def __init__(self, channel: Path, callbacks: Sequence[Any], log: Callable[[str], None], progress: Progress):
        self.channel, self.callbacks, self.log, self.progress = channel, callbacks, log, progress
        self.offset = 0
        self.error: BaseException | None = None  # what a callback raised: the attempt ends with it

    def poll(self) -> None:
        """One look at the channel (on the worker's main thread, where its signal handlers run)."""
        try:
            self._events()
            self._progress()
            for ask in sorted(self.channel.glob("save-*.ask")):
                epoch = int(ask.name.split("-")[1].split(".")[0])
                for cb in self.callbacks:
                    cb.before_save(epoch)
                ask.unlink()
                (self.channel / f"save-{epoch}.ok").touch()
            if any(cb.pause_requested() for cb in self.callbacks):
                (self.channel / "pause").touch()
        except Exception as err:  # a lost lease, an unreachable ledger: no rank saves again
            if self.error is None:
                self.error = err
            (self.channel / "stop").touch()

    def _events(self) -> None:
        path = self.channel / "events.jsonl"
        if not path.exists():
            return
        with open(path) as f:
            f.seek(self.offset)
            text = f.read()
        complete = text[: text.rfind("\n") + 1]
        self.offset += len(complete.encode())
        for line in complete.splitlines():
            event = json.loads(line)
            if "log" in event:
                self.log(event["log"])
            elif "start" in event:
                for cb in self.callbacks:
                    cb.on_start(event["start"])
            else:
                for cb in self.callbacks:
                    cb.on_epoch_end(event["epoch"], event["metrics"])

    def _progress(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            seen = json.loads((self.channel / "progress.json").read_text())
            self.progress.steps, self.progress.batch, self.progress.batches = (
                seen["steps"],
                seen["batch"],
                seen["batches"],
            )


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _launch_config(nodes: int, per_node: int, endpoint: str, log_dir: Path, node_rank: int = 0,
                   run_id: str | None = None) -> Any:  # fmt: skip
    """torch's launcher for one group: a local c10d rendezvous on one host, else a static one at `endpoint`, which
    the agent of node rank 0 hosts (node ranks as the allocation orders its tasks)."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.launcher.api import LaunchConfig

    where: dict[str, Any] = (
        {"rdzv_backend": "c10d", "local_addr": "127.0.0.1"}
        if nodes == 1
        else {"rdzv_backend": "static", "rdzv_configs": {"rank": node_rank, "timeout": JOIN_TIMEOUT_S}}
    )
    return LaunchConfig(
        min_nodes=nodes, max_nodes=nodes, nproc_per_node=per_node, run_id=run_id or uuid.uuid4().hex,
        rdzv_endpoint=endpoint, max_restarts=0, monitor_interval=0.1, start_method="spawn",
        shutdown_timeout=SHUTDOWN_S, logs_specs=DefaultLogsSpecs(log_dir=str(log_dir)), **where,
    )  # fmt: skip


def _run_group(config: Any, tree: dict[str, Any], run_dir: str, cuda: bool, outcome: dict[str, Any]) -> None:
    """The launcher's whole life for one group (on a thread of its own: it then installs no signal handlers, and
    stops reach the ranks through the channel); `outcome` gets the ranks' returns, or what failed."""
    from torch.distributed.launcher.api import elastic_launch

    try:
        outcome["ranks"] = elastic_launch(config, _rank_main)(tree, run_dir, cuda)
    except BaseException as err:  # a rank that failed (ChildFailedError), or the launcher's own (a rendezvous)
        outcome["failed"] = err


def follow_group(nodes: Nodes, node_rank: int, log: Callable[[str], None] = print) -> int:
    """A node other than the leader's (`node_rank` ≥ 1): join every group the leader publishes in `nodes.folder`, one
    after another, until it says the allocation is over; returns the number of the last one it joined (0: none; a
    follower that comes late joins the newest group only). A group that fails here fails on every node (the
    leader's attempt ends as a crash), so this node just waits for the next."""
    joined = 0
    while True:
        newer = [n for n in nodes.groups() if n > joined]
        if newer:
            joined = newer[-1]
            info = nodes.read(joined)
            log(f"node {node_rank}: joining group {joined} at {info['endpoint']} ({info['per_node']} ranks here)")
            config = _launch_config(nodes.count, info["per_node"], info["endpoint"], nodes.folder / f"node-{node_rank}",
                                    node_rank, info["run_id"])  # fmt: skip
            outcome: dict[str, Any] = {}
            thread = threading.Thread(target=_run_group, args=(config, info["tree"], info["run_dir"], info["cuda"],
                                                               outcome), name="ddp-node", daemon=True)  # fmt: skip
            thread.start()
            while thread.is_alive():  # joined in short waits: the main thread keeps taking (and ignoring) signals
                thread.join(POLL_S * 4)
            if "failed" in outcome:
                log(f"node {node_rank}: group {joined} failed: {_first_line(outcome['failed'])}")
            continue
        if nodes.is_over():
            return joined
        time.sleep(POLL_S * 4)


def _end_ranks() -> None:
    """SIGKILL this process's ranks (and their loader processes): the attempt is over here."""
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            child.kill()


def train_trial(
    cfg: RunConfig,
    run_dir: Path | None = None,
    callbacks: Sequence[Any] = (),
    log: Callable[[str], None] = print,
    warm: Warm | None = None,
    progress: Progress | None = None,
) -> RunResult:
    """`engine.train` for any `train.devices`: in this process alone, or as a group of that many ranks on this
    host (`train_ddp`; a group needs `run_dir`, where its ranks meet and rank 0 checkpoints)."""
    if cfg.train.devices == 1:
        return train(cfg, run_dir, callbacks, log, warm, progress)
    if run_dir is None:
        raise SenetError(f"train.devices: {cfg.train.devices} needs a run folder (its ranks meet there)")
    cuda = pick_device(cfg.train.device).type == "cuda"
    nodes = Nodes.from_env()
    return train_ddp(cfg.model_dump(), cfg.train.devices, cuda, run_dir, callbacks, log, progress or Progress(), nodes)


def train_ddp(
    tree: dict[str, Any],
    devices: int,
    cuda: bool,
    run_dir: Path,
    callbacks: Sequence[Any],
    log: Callable[[str], None],
    progress: Progress,
    nodes: Nodes | None = None,
) -> RunResult:
    """Train the resolved configuration `tree` as a group of `devices` ranks on this host (`cuda`: one GPU each,
    the first `devices` of CUDA_VISIBLE_DEVICES), or over the allocation's `nodes` (this host is the first, its
    part of the ranks the first); the callbacks hear rank 0 as they would a single-device run.

    Raises:
        GroupFailed: a rank died or raised (its traceback is in the launcher's message).
        Paused: a callback asked for a pause and every rank stopped at the same checkpointed step.
        SenetError: the configuration or data is refused (a rank's one line).
    """
    # Its warning that it cannot install signal handlers off the main thread: by design here (stops reach the ranks
    # through `pause`, and a rank dies with its worker), so it would only mislead; its errors still show.
    logging.getLogger("torch.distributed.elastic.multiprocessing.api").setLevel(logging.ERROR)
    channel = run_dir / CHANNEL
    shutil.rmtree(channel, ignore_errors=True)
    channel.mkdir(parents=True)
    count = nodes.count if nodes is not None else 1
    if devices % count:
        raise SenetError(f"train.devices: {devices} does not split over the allocation's {count} nodes; allowed: a "
                         f"multiple of {count}")  # fmt: skip
    per_node = devices // count
    if nodes is None or count == 1:
        config = _launch_config(1, devices, f"127.0.0.1:{_free_port()}", channel / "launcher")
        env = {"GLOO_SOCKET_IFNAME": "lo", "NCCL_SOCKET_IFNAME": "lo"}  # one host: the group talks over loopback
    else:  # the other nodes reach this host by its name; the site's NCCL/GLOO_SOCKET_IFNAME say over which network
        endpoint = f"{socket.gethostname()}:{_free_port('')}"
        config = _launch_config(count, per_node, endpoint, channel / "launcher")
        number = nodes.publish({"endpoint": endpoint, "per_node": per_node, "run_id": config.run_id, "tree": tree,
                                "run_dir": str(run_dir), "cuda": cuda})  # fmt: skip
        log(f"group {number}: {devices} ranks over {count} nodes ({per_node} each), rendezvous at {endpoint}")
        env = {}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update({k: os.environ.get(k) or v for k, v in env.items()})
    outcome: dict[str, Any] = {}
    bridge = _AgentBridge(channel, callbacks, log, progress)
    thread = threading.Thread(target=_run_group, args=(config, tree, str(run_dir), cuda, outcome), name="ddp-agent",
                              daemon=True)  # fmt: skip
    thread.start()
    try:
        while thread.is_alive():
            thread.join(POLL_S)
            bridge.poll()
        bridge.poll()
    except BaseException:
        _end_ranks()
        thread.join(10)
        raise
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if bridge.error is not None:
        raise bridge.error
    if "failed" in outcome:
        raise GroupFailed(f"a rank of the {devices}-device group failed: {_first_line(outcome['failed'])}")
    ranks = outcome["ranks"]
    errors = [r["error"] for r in ranks.values() if "error" in r]
    if errors:
        raise SenetError(errors[0])
    if "paused" in ranks[0]:
        raise Paused(*ranks[0]["paused"])
    result = RunResult(**ranks[0]["result"])
    for cb in callbacks:
        cb.on_end(result)
    return result


def _first_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return (text or type(err).__name__)[:400]

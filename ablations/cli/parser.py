"""The command line's grammar: a parser that answers a typo with "did you mean" under the subcommand's own usage, the
help every subcommand has (a description, an example, a text per option), and the options commands share.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn

from ablations.paths import RESULTS

# A word after the study: `se.reduction=8`, `se.reduction=4,8,16`, `reference.se.reduction=8`, `seeds=3`.
OVERRIDE = re.compile(r"[A-Za-z_][\w.]*=.*", re.DOTALL)
_CHOICE = re.compile(r"invalid choice: '(?P<word>.*)' \(choose from (?P<choices>.*)\)$")


class Parser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` for people who mistype: an unknown command, option or choice gets the closest
    allowed one (argparse has no `suggest_on_error` before Python 3.14), an unknown option of a subcommand is told
    under that subcommand's usage, and the `KEY=VALUE` words of a study command may come after its options too."""

    commands: argparse._SubParsersAction[Parser] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)  # examples keep their lines
        super().__init__(*args, **kwargs)

    def add_subparsers(self, **kwargs: Any) -> argparse._SubParsersAction[Parser]:
        self.commands = super().add_subparsers(**kwargs)
        return self.commands

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> argparse.Namespace:  # type: ignore[override]
        ns, extra = self.parse_known_args(args, namespace)
        chosen = (self.commands.choices.get(getattr(ns, "command", None)) if self.commands else None) or self
        words = getattr(ns, "overrides", None)
        if words is not None:  # argparse ends a `nargs="*"` positional at the first option; the rest land here
            words += [w for w in extra if OVERRIDE.fullmatch(w)]
            extra = [w for w in extra if not OVERRIDE.fullmatch(w)]
            for word in words:
                if not OVERRIDE.fullmatch(word):
                    chosen.error(f"argument KEY=VALUE: {word!r} is not KEY=VALUE, e.g. se.reduction=8")
        if extra:
            chosen.error(f"unrecognized arguments: {' '.join(extra)}")
        return ns

    def error(self, message: str) -> NoReturn:
        super().error(message + self._hint(message))

    def _hint(self, message: str) -> str:
        from ablations.config import did_you_mean  # the configuration module loads torch: only for a typo

        choice = _CHOICE.search(message)
        if choice:
            return did_you_mean(choice["word"], re.findall(r"'([^']*)'", choice["choices"]))
        if not message.startswith("unrecognized arguments: "):
            return ""
        takes_words = any(a.dest == "overrides" for a in self._actions)
        for word in message.removeprefix("unrecognized arguments: ").split():
            flag = word.partition("=")[0]
            if flag in ("-m", "--multirun"):
                return "; -m (Hydra's multirun) is taken by `sweep` only, and changes nothing: a sweep runs every trial"
            if word.startswith("-"):
                return did_you_mean(flag, self._option_string_actions)
            if takes_words:
                return f"; after the study give KEY=VALUE words, e.g. se.reduction=8 (not {word!r})"
        return ""


class _Version(argparse.Action):
    """`--version`: the installed distribution's version and the git commit it runs from, found only when asked."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> NoReturn:
        print(version())  # on stdout, as argparse's own version action prints
        parser.exit()


def version() -> str:
    """`senet-ablate 0.1.0 (git 5329209c1a2b, dirty)`; without a git checkout, the version alone."""
    from ablations.tracking import code_version  # runs git: only for --version

    try:
        number = metadata.version("senet-ablate")
    except metadata.PackageNotFoundError:
        number = "(not installed)"
    code = code_version()
    if code["git_sha"] == "unknown":
        return f"senet-ablate {number}"
    dirty = ", dirty" if code["git_dirty"] == "true" else ""
    return f"senet-ablate {number} (git {code['git_sha'][:12]}{dirty})"


def top_parser() -> Parser:
    examples = ["senet-ablate sweep demo --workers 2", "senet-ablate status demo", "senet-ablate report demo"]
    parser = Parser(prog="senet-ablate", description="Run, track and report ablation studies of Squeeze-and-"
                    "Excitation networks; `senet-ablate COMMAND -h` tells each command's options.",
                    epilog="examples:\n" + "\n".join(f"  {e}" for e in examples))  # fmt: skip
    parser.add_argument("--version", action=_Version, help="the installed version and its git commit, then exit")
    return parser


def command(
    sub: argparse._SubParsersAction[Parser],
    name: str,
    func: Callable[[argparse.Namespace], int],
    text: str,
    examples: Sequence[str],
    description: str | None = None,
) -> Parser:
    """A subcommand with the help every one has: `text` in the list of commands, a description line (by default
    `text` as a sentence) and its examples."""
    lines = "\n".join(f"  {e}" for e in examples)
    p = sub.add_parser(name, help=text, description=description or f"{text[0].upper()}{text[1:]}.",
                       epilog=f"example{'s' if len(examples) > 1 else ''}:\n{lines}")  # fmt: skip
    p.set_defaults(func=func)
    return p


def study_words(q: argparse.ArgumentParser) -> None:
    """The `KEY=VALUE` words after the study (README, Overrides)."""
    q.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE", help="this run's overrides: a config value "
                   "as with --set (se.reduction=8, a list is [2,3]); a factor's levels, replacing or adding it "
                   "(se.reduction=4,8,16); reference.KEY=VALUE, the level effects are measured to; seeds=N or "
                   "seeds=[0,4]")  # fmt: skip


def place(q: argparse.ArgumentParser, optional: bool = False) -> None:
    """The study (`optional`: or none, for every study of the results folder) and where its sweep keeps its ledger
    and runs."""
    text = "a shipped study name (see `senet-ablate list`) or a path to a YAML spec"
    if optional:
        q.add_argument("study", nargs="?", help=f"{text}; without it: the studies of the results folder, counted")
    else:
        q.add_argument("study", help=text)
    q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config value on every trial, "
                   "e.g. se.reduction=8 or se.stages=[2,3] (repeatable; levels go after the study)")  # fmt: skip
    q.add_argument("--results", type=Path, default=RESULTS, help="output folder (default ./results)")
    q.add_argument("--storage", help="ledger URL; default $SENET_ABLATE_STORAGE (keeps a password out of the "
                   "process list), else ledger.db in the results folder")  # fmt: skip
    q.add_argument("--tracking-uri", help="MLflow URI (default: $MLFLOW_TRACKING_URI, else sqlite in results)")
    q.add_argument("--max-retries", type=int, default=1, help="retries of a crashed or out-of-memory trial (default 1)")


def slots(q: argparse.ArgumentParser) -> None:
    """How many workers, on which devices, and how long each lives."""
    q.add_argument("--workers", type=int, default=1, help="warm worker processes on the CPU (default 1)")
    q.add_argument("--gpus", default="", help="visible CUDA devices: indices, GPU-/MIG-<uuid>, comma-separated")
    q.add_argument("--trials-per-gpu", default="1", help="workers sharing each GPU, or auto (measure, then pack)")
    q.add_argument("--recycle-after", type=int, default=50, help="trials per worker process before a fresh one")
    q.add_argument("--fresh-process", action="store_true", help="one fresh process per trial (--recycle-after 1)")
    q.add_argument("--max-worker-mb", type=float, help="replace a worker whose resident memory grows past this")
    q.add_argument("--no-progress", action="store_true", help="no progress bars (logs, CI)")


def reading(q: argparse.ArgumentParser) -> None:
    """How a sweep is read back."""
    q.add_argument("--device", choices=["cpu", "cuda"], help="what `auto` resolved to in the sweep (default: as the "
                   "ledger recorded it)")  # fmt: skip


def trained(q: argparse.ArgumentParser, device: bool = True) -> None:
    """Options naming an imported network and the image folder it is read back on."""
    q.add_argument("--model", help="registry name, e.g. se_resnet50 (with timm:NAME: its configuration)")
    q.add_argument("--weights", help="a .pth / .safetensors file or timm:NAME (see README, imported weights)")
    q.add_argument("--data", help="imagefolder:DIR, one sub-folder per class (DIR/val when it exists)")
    q.add_argument("--image-size", type=int, default=224, help="centre crop after resizing to 256/224 of it")
    q.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    q.add_argument("--workers", type=int, default=4, help="image decoding processes (default 4)")
    if device:
        q.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="where the network runs "
                       "(default auto: CUDA when there is one)")  # fmt: skip
        q.add_argument("--json", action="store_true", help="print the result as one JSON object")
        q.add_argument("--no-progress", action="store_true", help="no progress bar")


def tracking(q: argparse.ArgumentParser, what: str) -> None:
    """`--results` and `--tracking-uri` of a command that reads (or serves) MLflow runs."""
    q.add_argument("--results", type=Path, default=RESULTS, help=f"{what} (default ./results)")
    q.add_argument("--tracking-uri", help="MLflow URI (default: $MLFLOW_TRACKING_URI, else sqlite in results)")


def server_options(q: argparse.ArgumentParser, http_workers: int, why: str) -> None:
    """Where an MLflow server listens and how many processes answer."""
    q.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; see README before exposing)")
    q.add_argument("--port", type=int, default=5000, help="TCP port to listen on (default 5000)")
    q.add_argument("--http-workers", type=int, default=http_workers, help=f"server processes answering requests "
                   f"(default {http_workers}{why})")  # fmt: skip

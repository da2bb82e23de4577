"""The `senet-ablate` command line. User errors become one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import yaml

from ablations.errors import SenetError


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """`KEY=VALUE` pairs to a dict; values are YAML scalars or lists (`8`, `true`, `[2, 3]`, `max`)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise SenetError(f"--set: {item!r} is not KEY=VALUE, e.g. --set se.reduction=8")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError as err:
            raise SenetError(f"--set {key}: {raw!r} is not a valid value ({err.__class__.__name__})") from None
    return out


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _mark(ok: bool | None) -> str:
    return {None: "", True: "✓", False: "✗"}[ok]


def _cmd_profile(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from ablations.profile import profile, profile_paper

    if args.paper:
        rows = profile_paper()
    elif args.model:
        rows = profile(args.model, parse_set(args.set), args.input_size)
    else:
        raise SenetError("profile: give --model NAME or --paper")
    if args.json:
        for row in rows:
            print(json.dumps(row.as_dict(), sort_keys=True))
        return 0
    table = Table(title=f"Complexity at {rows[0].input_size}×{rows[0].input_size} (GFLOPs = multiply-adds / 1e9)")
    for col in ("table", "row", "model", "options", "params", "params (M)", "paper (M)", "", "GFLOPs", "paper", ""):
        table.add_column(col, justify="right" if col not in ("table", "row", "model", "options") else "left")
    for r in rows:
        p = r.paper
        opts = " ".join(f"{k}={v}" for k, v in r.options.items())
        table.add_row(
            p.table if p else "",
            p.label if p else "",
            r.model,
            opts,
            f"{r.params:,}",
            f"{r.params / 1e6:.2f}",
            _fmt(p.params_m if p else None, ".1f"),
            _mark(r.params_ok),
            f"{r.gflops:.3f}",
            _fmt(p.gflops if p else None, ".3f" if p and p.gflops and p.gflops < 1 else ".2f"),
            _mark(r.gflops_ok),
        )
    Console(width=200).print(table)
    if args.paper:
        checked = [ok for r in rows for ok in (r.params_ok, r.gflops_ok) if ok is not None]
        rule = "params within ±0.1M, GFLOPs equal at the paper's digits"
        print(f"{sum(checked)} of {len(checked)} published figures reproduced ({rule})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="senet-ablate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("profile", help="params and GFLOPs of a model configuration, beside the paper's")
    p.add_argument("--model", help="registry name, e.g. resnet50 or se_resnet50 (see `senet-ablate models`)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="option, e.g. se.reduction=8")
    p.add_argument("--input-size", type=int, default=224, help="square input side in pixels (default 224)")
    p.add_argument("--paper", action="store_true", help="reproduce the paper's complexity columns")
    p.add_argument("--json", action="store_true", help="one JSON object per configuration")
    p.set_defaults(func=_cmd_profile)

    m = sub.add_parser("models", help="list the registered backbones and their options")
    m.set_defaults(func=_cmd_models)
    return parser


def _cmd_models(args: argparse.Namespace) -> int:
    from senet_core import list_models, model_info

    for name in list_models():
        info = model_info(name)
        stages = ",".join(map(str, info.stages))
        print(f"{name:18s} {info.paper_name:12s} stages {stages:10s} options: {' '.join(info.options())}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SenetError as err:
        print(f"senet-ablate: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

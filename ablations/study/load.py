"""Reading study files safely: a shipped study by name or a user's YAML file, size- and alias-limited, UTF-8, parsed
with a SafeLoader; its includes are read once, kept on the spec, and checked for cycles.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from ablations.config import did_you_mean
from ablations.errors import SenetError
from ablations.study.spec import NAME, StudySpec, parse_spec

STUDIES = files("ablations").joinpath("studies")
MAX_SPEC_BYTES = 1 << 20  # a study file larger than this is not a study
MAX_NODES = 100_000  # values a study file may hold once its YAML aliases are expanded


def shipped_names() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in STUDIES.iterdir() if p.name.endswith(".yaml"))


class _Loader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a document whose aliases expand to more than MAX_NODES nodes (the "billion
    laughs": a few aliases of aliases make gigabytes for whoever walks the document, validation included)."""

    def construct_document(self, node: yaml.Node) -> Any:
        if _expanded(node, {}) > MAX_NODES:
            raise yaml.YAMLError(f"its aliases (*name) expand to more than {MAX_NODES} values; write settings out")
        return super().construct_document(node)


def _expanded(node: yaml.Node, memo: dict[int, int]) -> int:
    """Nodes in `node` with every alias expanded, counted without expanding (shared nodes counted once each)."""
    if id(node) not in memo:
        memo[id(node)] = 1  # a recursive alias counts once instead of looping
        if isinstance(node, yaml.SequenceNode):
            memo[id(node)] = 1 + sum(_expanded(n, memo) for n in node.value)
        elif isinstance(node, yaml.MappingNode):
            memo[id(node)] = 1 + sum(_expanded(k, memo) + _expanded(v, memo) for k, v in node.value)
    return memo[id(node)]


def _read(path: Path, label: str) -> StudySpec:
    try:
        size = path.stat().st_size
        if size > MAX_SPEC_BYTES:
            raise SenetError(f"{label}: {size} bytes; a study file is at most {MAX_SPEC_BYTES} bytes of YAML text")
        text = path.read_bytes().decode("utf-8")
    except OSError as err:
        raise SenetError(f"{label}: cannot read the study file ({err.strerror})") from None
    except UnicodeDecodeError as err:
        raise SenetError(f"{label}: not UTF-8 text (byte {err.start}); a study file is YAML text") from None
    if "\x00" in text:
        raise SenetError(f"{label}: holds NUL bytes; a study file is YAML text")
    try:
        tree = yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise SenetError(f"{label}{line}: not valid YAML ({problem})") from None
    spec = parse_spec(tree, label)
    spec._file = path
    return spec


def load_spec(name_or_path: str | Path) -> StudySpec:
    """A shipped study by name (`ablations/studies/<name>.yaml`) or a user's YAML file, with its includes checked.

    Raises:
        SenetError: a missing file, invalid YAML, a malformed spec or a bad include, in one line naming the
            file and field.
    """
    spec = _load_one(str(name_or_path), None)
    closure(spec)
    return spec


def _load_one(ref: str, near: Path | None, path: str = "study") -> StudySpec:
    """A shipped study name, or a .yaml path (relative paths against `near`, the including file's folder)."""
    if NAME.fullmatch(ref):
        if ref not in shipped_names():
            raise SenetError(f"{path}: {ref!r} is not a study; allowed: {', '.join(shipped_names())}, or a path to a "
                             f".yaml file{did_you_mean(ref, shipped_names())}")  # fmt: skip
        resource = STUDIES.joinpath(f"{ref}.yaml")
        return _read(Path(str(resource)), f"{ref}.yaml")
    file = Path(ref).expanduser()
    if near is not None and not file.is_absolute():
        file = near / file
    if not file.is_file():
        shipped = ", ".join(shipped_names())
        raise SenetError(f"{path}: {file}: no such study file; give a path to a .yaml file or one of: {shipped}")
    return _read(file, str(file))


def included(spec: StudySpec) -> list[StudySpec]:
    """The studies `spec` includes, read once and kept on it (relative paths next to its file)."""
    if spec._included is None:
        near = spec._file.parent if spec._file is not None else None
        spec._included = [_load_one(ref, near, f"{spec.where}: include[{i}]") for i, ref in enumerate(spec.include)]
    return spec._included


def closure(spec: StudySpec, chain: tuple[str, ...] = ()) -> list[StudySpec]:
    """The spec and every study it includes, depth first, each once; an include cycle is a SenetError."""
    chain = (*chain, spec.name)
    out = [spec]
    for i, child in enumerate(included(spec)):
        if child.name in chain:
            raise SenetError(f"{spec.where}: include[{i}]: cycle {' → '.join((*chain, child.name))}")
        out += [s for s in closure(child, chain) if s.name not in {o.name for o in out}]
    return out


def list_studies() -> list[StudySpec]:
    """Every shipped study, by name."""
    return [load_spec(name) for name in shipped_names()]

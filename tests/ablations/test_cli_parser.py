"""The command line's answers to habits and typos: "did you mean" under the subcommand's own usage, Hydra's
KEY=VALUE words and -m, --version, and the help every subcommand and option has (no sweep trains here)."""

from __future__ import annotations

import argparse
from importlib import metadata

import pytest

from ablations.cli import build_parser, main
from ablations.cli.sweep import study_overrides, sweep_options
from tests._support.configs import write_spec


@pytest.fixture
def tiny(tmp_path):
    return str(write_spec(tmp_path))  # the gate (sigmoid, tanh) x 2 seeds, synthetic data


@pytest.mark.parametrize(
    ("argv", "usage", "line"),
    [
        (
            ["statu", "demo"],
            "usage: senet-ablate [-h]",
            "senet-ablate: error: argument COMMAND: invalid choice: 'statu' (choose from 'profile', ",
        ),
        (
            ["sweep", "demo", "--wokers", "2"],
            "usage: senet-ablate sweep [-h]",
            "senet-ablate sweep: error: unrecognized arguments: --wokers 2; did you mean --workers?",
        ),
        (
            ["status", "demo", "-m"],
            "usage: senet-ablate status [-h]",
            "senet-ablate status: error: unrecognized arguments: -m; -m (Hydra's multirun) is taken by `sweep` only",
        ),
        (
            ["report", "demo", "se.reduction", "8"],
            "usage: senet-ablate report [-h]",
            "senet-ablate report: error: argument KEY=VALUE: 'se.reduction' is not KEY=VALUE, e.g. se.reduction=8",
        ),
        (
            ["retry", "demo", "--failed", "se.reduction", "8"],
            "usage: senet-ablate retry [-h]",
            "senet-ablate retry: error: unrecognized arguments: se.reduction 8; after the study give KEY=VALUE words",
        ),
        (
            ["knockout", "--device", "cdua"],
            "usage: senet-ablate knockout [-h]",
            "senet-ablate knockout: error: argument --device: invalid choice: 'cdua' (choose from 'auto', 'cpu', "
            "'cuda'); did you mean cuda?",
        ),
        (["ui", "--port"], "usage: senet-ablate ui [-h]", "senet-ablate ui: error: argument --port: expected one"),
        (
            ["list", "se.reduction=8"],
            "usage: senet-ablate list [-h]",
            "senet-ablate list: error: unrecognized arguments: se.reduction=8",
        ),
    ],
)
def test_a_usage_error_is_told_under_its_commands_usage_with_the_closest_word(argv, usage, line, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith(usage) and err[-1].startswith(line), err
    assert "did you mean status?" in err[-1] if argv[0] == "statu" else True


@pytest.mark.parametrize(
    ("words", "line"),
    [
        (["sweep", "demoo"], "study: 'demoo' is not a study; allowed: cifar_search, cifar_table4, "),
        (["sweep", "{tiny}", "se.reducton=4"], "--set se.reducton: unknown key; allowed in se: enabled, "),
        (
            ["sweep", "{tiny}", "--set", "se.stages=2,3"],
            "--set se.stages: '2,3' is not one value; a list is written "
            "[2,3], and a factor's levels for one sweep come after the study: senet-ablate sweep STUDY se.stages=2,3",
        ),
        (
            ["sweep", "{tiny}", "se.reduction=4,8"],
            "se.reduction=4,8: the reference of study 'tiny' is se.reduction=16, not among these levels; add it "
            "(se.reduction=4,8,16) or name one of them as the reference (reference.se.reduction=4)",
        ),
        (["status", "{tiny}", "reference.se.reduction=4,8"], "reference.se.reduction: a reference is one level"),
        (["sweep", "{tiny}", "se.reduction=4", "se.reduction=4,16"], "se.reduction: given as one value and as levels"),
    ],
)
def test_a_mistyped_study_or_key_and_a_misplaced_list_are_one_line(words, line, tiny, capsys):
    argv = [w.format(tiny=tiny) for w in words] + ["--dry-run"] * (words[0] == "sweep")
    assert main(argv) == 2
    [err] = capsys.readouterr().err.strip().splitlines()
    assert err.startswith(f"senet-ablate: error: {line}"), err
    hint = {"demoo": "did you mean demo?", "se.reducton=4": "did you mean se.reduction?"}
    assert all(h in err for w, h in hint.items() if w in words), err


def test_key_value_words_before_and_after_options_and_m_are_the_sweeps_overrides(tiny):
    argv = ["sweep", tiny, "se.reduction=4,16", "--dry-run", "-m", "--workers", "1", "seeds=1", "--set", "train.lr=1"]
    args = build_parser().parse_args(argv)
    assert args.overrides == ["se.reduction=4,16", "seeds=1"] and args.multirun and args.workers == 1
    assert sweep_options(args).overrides == {"train.lr": 1, "levels:se.reduction": [4, 16], "seeds": 1}


def test_the_words_grammar():
    assert study_overrides([], []) is None  # nothing given: read as the sweep recorded it
    assert study_overrides(["se.reduction=8"], ["train.epochs=1"]) == {"se.reduction": 8, "train.epochs": 1}
    assert study_overrides([], ["se.stages=[2,3]"]) == {"se.stages": [2, 3]}  # brackets: one list value
    assert study_overrides([], ["se.stages=[2],[2,3],null"]) == {"levels:se.stages": [[2], [2, 3], None]}
    assert study_overrides([], ["data.root='a,b'"]) == {"data.root": "a,b"}  # quoted: one value
    assert study_overrides([], ["se.reduction=4,8", "reference.se.reduction=8"]) == {
        "levels:se.reduction": [4, 8], "reference:se.reduction": 8}  # fmt: skip
    assert study_overrides(["seeds=3"], []) == {"seeds": 3}
    assert study_overrides([], ["seeds=0,4"]) == {"seeds": [0, 4]}
    assert study_overrides([], ["se.reduction=8", "se.reduction=4"]) == {"se.reduction": 4}  # the last word wins


def test_version_names_the_distribution_and_its_commit(capsys):
    assert main(["--version"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"senet-ablate {metadata.version('senet-ablate')}") and "\n" not in out


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_every_command_has_a_description_an_example_and_help_on_every_option():
    """Held by every subcommand, those added later too: `senet-ablate COMMAND -h` says what it does, shows how to
    call it and tells each option."""
    parser = build_parser()
    missing = []
    for name, p in {"senet-ablate": parser, **_commands(parser)}.items():
        if not (p.description or "").strip():
            missing.append(f"{name}: description")
        if not (p.epilog or "").startswith("example") or "senet-ablate " not in p.epilog:
            missing.append(f"{name}: example (epilog 'example:\\n  senet-ablate ...')")
        if p.formatter_class is not argparse.RawDescriptionHelpFormatter:
            missing.append(f"{name}: formatter_class RawDescriptionHelpFormatter (the example keeps its lines)")
        for action in p._actions:
            if not (action.help or "").strip() or action.help == argparse.SUPPRESS:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}: help")
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    missing += [f"{c.dest}: help in the list of commands" for c in sub._choices_actions if not c.help]
    assert not missing, missing
    assert len(_commands(parser)) >= 14


def test_output_piped_into_a_reader_that_stops_early_ends_quietly(monkeypatch):
    """`senet-ablate status demo | head -3`: the reader going away ends the command with 141, no traceback."""
    import ablations.cli as cli

    def closed(argv=None):
        raise BrokenPipeError(32, "Broken pipe")

    codes = []
    monkeypatch.setattr(cli, "main", closed)
    monkeypatch.setattr(cli, "exit_now", codes.append)
    cli.console()
    assert codes == [141]

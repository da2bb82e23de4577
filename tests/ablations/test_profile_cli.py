"""`senet-ablate profile`: the paper comparison, JSON output and clear errors."""

import json

import pytest

from ablations.cli import main
from ablations.profile import profile, profile_paper


def test_paper_ablation_figures_all_reproduce():
    rows = profile_paper()
    ablation = [r for r in rows if r.paper.table in ("Table 10", "Table 13", "Table 15", "Table 16")]
    assert len(ablation) == 16
    assert all(r.params_ok for r in ablation)
    assert all(r.gflops_ok for r in ablation if r.paper.gflops is not None)
    tables = {r.paper.table for r in rows}
    assert tables == {"Table 2", "Table 3", "Table 10", "Table 13", "Table 15", "Table 16"}


def test_profile_puts_the_paper_value_beside_ours():
    rows = profile("se_resnet50", {"se.squeeze": "none", "se.bias": False})
    assert [r.paper.label for r in rows] == ["NoSqueeze"]
    assert rows[0].paper.gflops == 4.27 and round(rows[0].gflops, 2) == 4.27
    assert profile("se_resnet50", {"se.reduction": 3})[0].paper is None


def test_json_output(capsys):
    assert main(["profile", "--model", "se_resnet20", "--set", "se.reduction=4", "--input-size", "32", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    obj = json.loads(lines[0])
    assert obj["model"] == "se_resnet20" and isinstance(obj["params"], int) and isinstance(obj["gflops"], float)
    assert obj["params"] == 278_206


def test_paper_json_has_one_object_per_row(capsys):
    assert main(["profile", "--paper", "--json"]) == 0
    objs = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert len(objs) == len(profile_paper())
    nosq = next(o for o in objs if o.get("paper_row") == "NoSqueeze")
    assert nosq["gflops_match"] is True and nosq["paper_gflops"] == 4.27


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["profile", "--model", "nope"], "model: 'nope' is not a known model; allowed: mobilenet_v1"),
        (["profile", "--model", "se_resnet50", "--set", "se.excitation=gelu"], "allowed: sigmoid, tanh, relu"),
        (["profile", "--model", "se_resnet50", "--set", "se.reduction"], "--set: 'se.reduction' is not KEY=VALUE"),
        (["profile"], "give --model NAME or --paper"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1

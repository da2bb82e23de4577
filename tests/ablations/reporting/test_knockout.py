"""`senet-ablate knockout` end to end: rows for all blocks, each stage and each block, with the mean-gate control;
gates that are already 1 change nothing; the all-blocks row is the network without SE (hand-counted); the paired
statistics are scipy's and statsmodels'; a finished run of a sweep is read back from MLflow and its checkpoint."""

import json

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar

from ablations.reporting.knockout import paired_change
from ablations.tracking import Tracker
from ablations.training.engine import train
from senet_core import build_model
from tests._support.commands import run_error, run_json, run_text
from tests._support.configs import tiny_config
from tests._support.images import hand_predictions, write_folder
from tests._support.networks import saturate_gates, save, trained_like

BLOCKS = [f"SE_{s}_{i}" for s in (2, 3, 4) for i in (1, 2, 3)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("knockout") / "data", ["a", "b", "c", "d"], per_class=6)


def _rows(got):
    return {(r["target"], r["gate"]): r for r in got["rows"]}


def test_gates_already_at_one_change_nothing(folder, tmp_path, capsys):
    path = save(saturate_gates(trained_like("se_resnet20", **{"model.num_classes": 4})), tmp_path / "w.pth")
    got = run_json("knockout", "--model", "se_resnet20", "--weights", str(path), "--data", f"imagefolder:{folder}",
                   capsys=capsys)  # fmt: skip
    rows = _rows(got)
    targets = ["all", "stage 2", "stage 3", "stage 4", *BLOCKS]
    assert list(rows) == [(t, g) for t in targets for g in ("1", "mean")]  # every stage and block, and the control
    assert rows[("stage 3", "1")]["blocks"] == ["SE_3_1", "SE_3_2", "SE_3_3"]
    for r in got["rows"]:
        for key in ("delta_top1", "delta_top4"):
            assert r[key] == {"delta": 0.0, "low": 0.0, "high": 0.0, "worse": 0, "better": 0, "p": 1.0}
        assert r["top1_err"] == got["intact"]["top1_err"]


def test_knocking_out_every_gate_is_the_network_without_se(folder, tmp_path, capsys):
    model = trained_like("se_resnet20", **{"model.num_classes": 4})
    path = save(model, tmp_path / "w.pth")
    got = run_json("knockout", "--model", "se_resnet20", "--weights", str(path), "--data", f"imagefolder:{folder}",
                   "--rows", "stages", "--no-control", capsys=capsys)  # fmt: skip
    assert [(r["target"], r["gate"]) for r in got["rows"]] == [("all", "1"), ("stage 2", "1"), ("stage 3", "1"),
                                                                ("stage 4", "1")]  # fmt: skip
    plain = build_model("resnet20", {"model.num_classes": 4})
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if ".se." not in k})
    targets = {"a": 0, "b": 1, "c": 2, "d": 3}
    labels, intact = hand_predictions(model, folder, targets)
    _, knocked = hand_predictions(plain, folder, targets)
    all_row = got["rows"][0]
    wrong_intact, wrong_knocked = intact[:, 0] != labels, knocked[:, 0] != labels
    assert got["intact"]["top1_err"]["errors"] == wrong_intact.sum()
    assert all_row["top1_err"]["errors"] == wrong_knocked.sum()
    d = all_row["delta_top1"]
    assert d["worse"] == (wrong_knocked & ~wrong_intact).sum() and d["better"] == (~wrong_knocked & wrong_intact).sum()
    assert d["worse"] + d["better"] > 0  # the SE blocks of this network matter
    assert d["delta"] == pytest.approx(all_row["top1_err"]["percent"] - got["intact"]["top1_err"]["percent"])


def test_paired_change_is_scipys_t_interval_and_the_exact_mcnemar_test():
    intact = np.array([0, 0, 0, 1, 1, 0, 0, 1, 0, 0, 0, 0], dtype=bool)
    knocked = np.array([1, 1, 0, 1, 0, 1, 0, 1, 0, 0, 1, 0], dtype=bool)
    c = paired_change(intact, knocked)
    d = knocked.astype(float) - intact.astype(float)
    ci = stats.ttest_1samp(d, 0).confidence_interval(0.95)
    assert (c.worse, c.better) == (4, 1) and c.delta == pytest.approx(100 * 3 / 12)
    assert (c.low, c.high) == pytest.approx((100 * ci.low, 100 * ci.high)) and c.low < c.delta < c.high
    assert c.p == pytest.approx(mcnemar([[0, 4], [1, 0]], exact=True).pvalue) == pytest.approx(0.375)


def test_text_output_names_the_method_and_the_papers_claim(folder, tmp_path, capsys):
    path = save(trained_like("se_resnet20", **{"model.num_classes": 4}), tmp_path / "w.pth")
    out = run_text("knockout", "--model", "se_resnet20", "--weights", str(path), "--data", f"imagefolder:{folder}",
                   "--rows", "stages", "--no-progress", capsys=capsys)  # fmt: skip
    assert "paired by image: 95% t-interval" in out and "exact McNemar" in out and "<0.1% top-5 error" in out
    assert len([line for line in out.splitlines() if line.startswith("stage ")]) == 6


def test_a_finished_run_is_read_back_from_mlflow_and_its_checkpoint(tmp_path, capsys):
    """The intact row on the run's test split is the test error the training engine recorded."""
    cfg = tiny_config(model={"name": "resnet20"}, se={"enabled": True, "reduction": 4})
    results = tmp_path / "results"
    key = f"{cfg.config_hash()}-s{cfg.seed}"
    result = train(cfg, results / "runs" / key, log=lambda _: None)
    uri = f"sqlite:///{results / 'mlflow.db'}"
    trial = {"key": key, "config_hash": cfg.config_hash(), "seed": cfg.seed, "label": "tiny", "factors": {},
             "flat": cfg.flat()}  # fmt: skip
    run_id = Tracker(uri, results).start_trial("tiny", None, trial, {})
    got = run_json("knockout", "--run", run_id, "--results", str(results), "--tracking-uri", uri, "--rows", "stages",
                   capsys=capsys)  # fmt: skip
    assert got["intact"]["top1_err"]["percent"] == pytest.approx(result.summary["test_top1_err"])
    assert got["intact"]["top3_err"]["percent"] == pytest.approx(result.summary["test_top5_err"])  # 3 classes
    assert got["images"] == 32 and got["weights"] == f"run {run_id}" and len(got["rows"]) == 8
    json.dumps(got)
    err = run_error("knockout", "--run", run_id, "--weights", "x.pth", "--results", str(results), capsys=capsys)
    assert err == "--run: give either --run RUN_ID or --model/--set/--weights, not both"
    err = run_error("knockout", "--run", "0123abcd", "--results", str(results), "--tracking-uri", uri, capsys=capsys)
    assert err.startswith("--run: '0123abcd' is not a run in sqlite:///")


def test_bad_input_is_one_line(folder, tmp_path, capsys):
    path = save(trained_like("resnet20", **{"model.num_classes": 4}), tmp_path / "plain.pth")
    data = f"imagefolder:{folder}"
    err = run_error("knockout", "--model", "resnet20", "--weights", str(path), "--data", data, "--workers", "0",
                    capsys=capsys)  # fmt: skip
    assert err == "knockout: the model has no SE blocks (se.enabled is false)"
    err = run_error("knockout", "--model", "resnet20", "--weights", str(path), capsys=capsys)
    assert err == "knockout: give --weights (a file or timm:NAME) and --data imagefolder:DIR"

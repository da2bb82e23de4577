"""`sweep --dry-run` checks what the sweep checks before it writes, and writes nothing; the data folder follows
--results (an earlier download into ./results/data is still found, with a note)."""

import pytest

from ablations.cli import main
from ablations.config import build_config
from ablations.datafiles import data_home, data_under, locate
from ablations.outcomes import Ending
from ablations.study.load import load_spec
from ablations.study.trials import expand
from ablations.sweep.ledger import Ledger, Owner
from ablations.sweep.status import ticket_of
from tests._support.configs import tiny_tree, write_spec
from tests._support.datasets import write_cifar
from tests._support.stores import local_ledger


def dry(spec, results, *args):
    return main(["sweep", str(spec), "--results", str(results), "--dry-run", *args])


@pytest.mark.parametrize(
    ("sets", "line"),
    [
        (["train.device=cuda"], "senet-ablate: error: train.device: 'cuda' requested"),
        (
            ["data.dataset=imagefolder", "data.root={tmp}/images"],
            "senet-ablate: error: data.root: {tmp}/images has no val/ folder",
        ),  # fmt: skip
        (
            ["data.dataset=cifar10", "data.root={tmp}/none"],
            "senet-ablate: error: data.root: cifar10 not found at "
            "{tmp}/none/cifar-10-batches-py; set data.download=true",
        ),  # fmt: skip
    ],
)
def test_a_dry_run_refuses_what_the_sweep_refuses_and_writes_nothing(tmp_path, capsys, sets, line):
    (tmp_path / "images" / "train" / "a").mkdir(parents=True)  # an image folder without val/
    spec, results = write_spec(tmp_path), tmp_path / "results"
    sets = [s.format(tmp=tmp_path) for s in sets]
    assert dry(spec, results, *(x for s in sets for x in ("--set", s))) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(line.format(tmp=tmp_path)) and "\n" not in err
    assert not results.exists()
    # ... and the sweep refuses the same before it writes
    assert main(["sweep", str(spec), "--results", str(results), "--no-progress",
                 *(x for s in sets for x in ("--set", s))]) == 2  # fmt: skip
    assert capsys.readouterr().err.strip().startswith(line.format(tmp=tmp_path))
    assert not results.exists()


def test_a_dry_run_says_what_is_done_what_it_checked_and_what_it_would_download(tmp_path, capsys):
    spec, results = write_spec(tmp_path), tmp_path / "results"
    assert dry(spec, results) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-3] == "4 trials, 8 epochs in all"
    assert out[-2].startswith(f"checked: data, device cpu (this host), ledger {results / 'ledger.db'} (new), MLflow ")
    assert out[-1] == "nothing was written (dry run)" and not results.exists()

    trials = expand(load_spec(spec))  # two of the four trials trained already
    ledger = Ledger.open(local_ledger(results))
    for t in trials[:2]:
        ledger.enqueue(ticket_of(t))
        ledger.complete(ledger.claim({t.key}, Owner.me()), 5.0, Ending.FINISHED, result={})
    ledger.close()
    before = sorted(p.name for p in results.iterdir())
    assert dry(spec, results) == 0
    assert "4 trials, 8 epochs in all; 2 done, 0 failed, 2 to train" in capsys.readouterr().out
    assert sorted(p.name for p in results.iterdir()) == before

    cifar = write_spec(
        tmp_path, name="fetch", data={"dataset": "cifar10", "download": True, "root": str(tmp_path / "d")}
    )
    assert dry(cifar, results) == 0
    out = capsys.readouterr().out
    assert f"note: cifar10 is missing: the sweep downloads it into {tmp_path / 'd'} first" in out
    assert not (tmp_path / "d").exists()


def test_downloads_follow_the_results_folder_and_an_earlier_download_is_still_found(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SENET_ABLATE_DATA", raising=False)
    data = build_config(tiny_tree(data={"dataset": "cifar10"})).data
    assert data_home() == tmp_path / "results" / "data" or str(data_home()) == "results/data"
    with data_under(tmp_path / "elsewhere"):
        assert data_home() == tmp_path / "elsewhere" / "data"
        with pytest.raises(Exception, match=f"not found at {tmp_path / 'elsewhere' / 'data'}/cifar-10-batches-py"):
            locate(data)
        write_cifar(tmp_path / "results" / "data", 10)  # a download into ./results/data before data followed --results
        files = locate(data)
        assert files[0].parent.absolute() == (tmp_path / "results" / "data" / "cifar-10-batches-py").absolute()
        note = capsys.readouterr().err
        assert "note: cifar10 read from results/data/cifar-10-batches-py, a download from before" in note
        write_cifar(tmp_path / "elsewhere" / "data", 10)
        assert locate(data)[0].parent == tmp_path / "elsewhere" / "data" / "cifar-10-batches-py"
    assert "SENET_ABLATE_DATA" not in __import__("os").environ


def test_a_gpu_group_larger_than_a_host_of_the_sweep_is_refused_before_anything_is_written(tmp_path):
    from ablations.config import Host
    from ablations.errors import SenetError
    from ablations.sweep.preflight import check_devices_fit

    spec = write_spec(tmp_path, grid={"train.devices": [1, 4]}, seeds=1)
    on_gpus = expand(load_spec(spec), host=Host("cuda"))
    check_devices_fit(on_gpus, 4, "this host's sweep")  # fits
    with pytest.raises(SenetError) as err:
        check_devices_fit(on_gpus, 2, "a task of --gpus-per-node 2")
    assert str(err.value) == (
        "train.devices: 4 is not allowed for train.devices=4: a task of --gpus-per-node 2 has 2 GPU(s); allowed: 1..2, "
        "or a host with more (a group spans several hosts only under --launcher slurm)"
    )
    check_devices_fit(expand(load_spec(spec), host=Host("cpu")), 1, "this host's sweep")  # CPU ranks: no limit


def test_under_slurm_a_group_larger_than_a_node_takes_whole_nodes():
    from ablations.errors import SenetError
    from ablations.sweep.slurm import check_nodes, nodes_for

    assert [nodes_for(d, 8) for d in (1, 8, 16, 32)] == [1, 1, 2, 4]
    assert nodes_for(16, 0) == 1  # CPU-only tasks: the ranks share one task's CPUs
    check_nodes([("a", 4), ("b", 8), ("c", 24)], 8)
    with pytest.raises(SenetError) as err:
        check_nodes([("a", 8), ("se.reduction=4", 12)], 8)
    assert str(err.value) == (
        "train.devices: 12 is not allowed for se.reduction=4 with --gpus-per-node 8: a trial larger than one node "
        "takes whole nodes; allowed: 1..8 or a multiple of 8"
    )

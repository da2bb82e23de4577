"""`senet-ablate clean`: what finished trials no longer need goes (their checkpoints' resume state, checkpoints set
aside, torn temp files), their weights stay readable by `knockout --run`; trials without a result are never
touched, also when the ledger changed after the plan was made."""

import torch

from ablations.cli import main
from ablations.outcomes import Standing
from ablations.paths import CHECKPOINT
from ablations.reporting.evaluate import finished_run
from ablations.study.load import load_spec
from ablations.sweep.clean import WEIGHTS, Item, Plan, apply, megabytes
from ablations.sweep.status import ReadOptions, study_status
from tests._support.results import EPOCHS, SET_ASIDE, STUDY, TORN, copy_results, fingerprint


def _clean(m, capsys, *args):
    capsys.readouterr()
    assert main(["clean", str(m.spec), "--results", str(m.results), *args]) == 0
    return capsys.readouterr().out.splitlines()


def test_a_dry_run_lists_what_it_would_free_and_changes_nothing(made_results, capsys):
    m = made_results
    before = fingerprint(m.results / "runs")
    out = _clean(m, capsys, "--dry-run")
    assert fingerprint(m.results / "runs") == before
    first, second = (f"{t.label} seed {t.seed} [{t.key}]" for t in m.trials[:2])
    assert out[0] == f"clean {STUDY}: 2 finished trials with a folder under {m.results}/runs"
    assert out[1:5] == [
        f"  {first}: remove {TORN}, the temp file of a write a kill interrupted: {megabytes(2000)}",
        f"  {first}: cut {CHECKPOINT} down to its weights, dropping its resume state (optimizer, rng_cpu, scheduler): "
        f"about {megabytes(_resume_bytes(m.folder(0) / CHECKPOINT))}",
        f"  {first}: remove {SET_ASIDE}, a checkpoint set aside as unloadable when the trial restarted: "
        f"{megabytes(3000)}",
        f"  {second}: cut {CHECKPOINT} down to its weights, dropping its resume state (optimizer, rng_cpu, scheduler):"
        f" about {megabytes(_resume_bytes(m.folder(1) / CHECKPOINT))}",
    ]
    assert out[5].startswith(f"kept: each finished trial's weights in its {CHECKPOINT}, which `knockout --run` and")
    assert out[6].endswith("after `retry`): 1 failed, 1 pending, 1 running")
    assert out[7].startswith("would free ") and out[7].endswith(" (dry run: nothing was changed)")


def _resume_bytes(path):
    state = torch.load(path, weights_only=True)
    return sum(t.numel() * t.element_size() for t in _tensors({k: v for k, v in state.items() if k not in WEIGHTS}))


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)


def test_clean_frees_the_resume_state_and_keeps_what_knockout_and_excitation_read(made_results, tmp_path, capsys):
    m = copy_results(made_results, tmp_path)
    weights = {i: torch.load(m.folder(i) / CHECKPOINT, weights_only=True)["model"] for i in (0, 1)}
    untouched = {i: fingerprint(m.folder(i)) for i in (2, 3, 4)}  # running, failed, queued again
    sizes = sum(p.stat().st_size for i in (0, 1) for p in m.folder(i).iterdir())
    out = _clean(m, capsys)
    freed = sizes - sum(p.stat().st_size for i in (0, 1) for p in m.folder(i).iterdir())
    assert out[-1] == f"freed {megabytes(freed)}" and freed > 2 * 1024 * 1024 * 0.9  # resume state: about the weights
    for i in (0, 1):
        assert sorted(p.name for p in m.folder(i).iterdir()) == [CHECKPOINT, "result.json", "train.log"]
        state = torch.load(m.folder(i) / CHECKPOINT, weights_only=True)
        assert sorted(state) == sorted(WEIGHTS) and state["epoch"] == EPOCHS
        assert all(torch.equal(state["model"][k], v) for k, v in weights[i].items())
    assert {i: fingerprint(m.folder(i)) for i in (2, 3, 4)} == untouched
    subject = finished_run(m.run_ids[m.trials[1].key], m.results, None)  # what `knockout --run` loads
    assert all(torch.equal(subject.model.state_dict()[k], v) for k, v in weights[1].items())
    again = _clean(m, capsys)  # a second clean finds nothing more
    assert again[1] == "  nothing to free" and again[-1] == "freed 0 B"


def test_clean_all_removes_the_final_checkpoints_and_says_what_then_cannot_be_read(made_results, tmp_path, capsys):
    m = copy_results(made_results, tmp_path)
    untouched = {i: fingerprint(m.folder(i)) for i in (2, 3, 4)}
    out = _clean(m, capsys, "--all")
    assert f"  {m.trials[1].label} seed 0 [{m.trials[1].key}]: remove {CHECKPOINT}, the final checkpoint (its " \
        "weights): " in "\n".join(out)  # fmt: skip
    assert ("kept: each finished trial's result.json and train.log; its checkpoint.pt is removed (--all): "
            "`knockout --run` and `excitation` can no longer read it") in out  # fmt: skip
    for i in (0, 1):
        assert sorted(p.name for p in m.folder(i).iterdir()) == ["result.json", "train.log"]
    assert {i: fingerprint(m.folder(i)) for i in (2, 3, 4)} == untouched


def test_apply_touches_only_trials_the_ledger_holds_a_result_of_at_that_moment(made_results, tmp_path):
    """The plan is made from a read of the ledger; each file goes only if its trial is still finished with no
    queued or leased attempt when it is removed: here a plan that names a running and a queued trial's files."""
    m = copy_results(made_results, tmp_path)
    _, found = study_status(load_spec(m.spec), ReadOptions(results=m.results))
    by_key = {s.trial.key: s for s in found}
    stale = [by_key[m.trials[i].key] for i in (2, 4)]
    assert [s.state for s in stale] == [Standing.RUNNING, Standing.PENDING]
    items = [Item(s, m.folder(i) / CHECKPOINT, 1, "x") for s, i in zip(stale, (2, 4), strict=True)]
    plan = Plan(STUDY, m.results, True, items)
    before = {i: fingerprint(m.folder(i)) for i in (2, 4)}
    assert apply(plan, str(m.results / "ledger.db")) == 0
    assert {i: fingerprint(m.folder(i)) for i in (2, 4)} == before


def test_clean_of_a_study_the_folder_does_not_hold_names_the_ones_it_does(made_results, capsys):
    m = made_results
    assert main(["clean", "demo", "--results", str(m.results)]) == 2
    assert capsys.readouterr().err == (
        f"senet-ablate: error: study: 'demo' has no trials in {m.results}/ledger.db; the studies there: {STUDY} (see "
        "`senet-ablate status --results DIR`)\n"
    )

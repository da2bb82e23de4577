"""Study specs: expansion into trials, resolution order, identity, dedup across studies, and one clear error per
mistake (no training here)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import yaml

from ablations.cli import main
from ablations.config import Host, build_config
from ablations.errors import SenetError
from ablations.study import trials as trials_mod
from ablations.study.load import list_studies, load_spec, shipped_names
from ablations.study.recipes import RECIPES
from ablations.study.spec import SEED_LINKED, STANDARD_SE, StudySpec, parse_spec
from ablations.study.trials import Trial, expand, plan, plan_trials, with_data_seed
from senet_core import model_info

# The shipped CIFAR studies' keys hold the digest of CIFAR's files: tiny ones stand in for them.
pytestmark = pytest.mark.usefixtures("default_cifar")

TABLES = ["reduction_ratio", "squeeze", "excitation", "stages", "integration", "inner_3x3", "no_squeeze"]
# configurations x seeds of every shipped study; `paper` is its tables with shared configurations counted once
TRIALS = {
    "reduction_ratio": 6 * 3,
    "squeeze": 2 * 3,
    "excitation": 4 * 3,
    "stages": 5 * 3,
    "integration": 4 * 3,
    "inner_3x3": 2 * 3,
    "no_squeeze": 3 * 3,
    "paper": 17 * 3,
    "cifar_table4": 4 * 3,
    "demo": 4 * 2,
    "fmnist_se": 2 * 3,
    "fmnist": 4 * 3,
    "gpu_check": 4 * 3,
    "gpu_kit": 4 * 2,
    "fmnist_search": 0,  # searches: no expansion lists a sampler's designs (`study.searched` does)
    "cifar_search": 0,
    "imagenet_reduction_ratio": 6 * 1,  # the tables on ImageNet: one seed, a trial is ~300 epochs on 8 GPUs
    "imagenet_squeeze": 2 * 1,
    "imagenet_excitation": 4 * 1,
    "imagenet_stages": 5 * 1,
    "imagenet_integration": 4 * 1,
    "imagenet_inner_3x3": 2 * 1,
    "imagenet_no_squeeze": 3 * 1,
}
SEARCHES = {"fmnist_search": 12, "cifar_search": 80}  # their spaces' sizes


def spec_of(**fields) -> dict:
    return {"name": "t", "description": "a test study", **fields}


def write(tmp_path: Path, text: str, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def by_label(trials: list[Trial], seed: int = 0) -> dict[str, Trial]:
    return {t.label: t for t in trials if t.seed == seed}


def test_two_factors_are_crossed_and_every_configuration_runs_every_seed():
    spec = parse_spec(spec_of(grid={"se.reduction": [8, 16], "se.excitation": ["sigmoid", "tanh"]}, seeds=3))
    trials = expand(spec)
    assert len(trials) == 2 * 2 * 3
    levels = {(t.factors["se.reduction"], t.factors["se.excitation"]) for t in trials}
    assert levels == set(itertools.product([8, 16], ["sigmoid", "tanh"]))
    assert {t.seed for t in trials} == {0, 1, 2}
    t = by_label(trials)["se.reduction=8, se.excitation=tanh"]
    assert (t.config.se.reduction, t.config.se.excitation, t.config.seed) == (8, "tanh", 0)
    assert len({t.key for t in trials}) == 12 and len({t.config_hash for t in trials}) == 4


def test_extras_sit_beside_the_grid_and_explicit_seeds_are_kept():
    spec = parse_spec(spec_of(grid={"se.reduction": [4, 16]}, extra=[{"label": "no SE", "set": {"se.enabled": False}}],
                              seeds=[3, 7]))  # fmt: skip
    trials = expand(spec)
    assert [(t.label, t.seed) for t in trials] == [
        ("se.reduction=4", 3), ("se.reduction=4", 7), ("se.reduction=16", 3), ("se.reduction=16", 7),
        ("no SE", 3), ("no SE", 7),
    ]  # fmt: skip
    assert by_label(trials, 3)["no SE"].factors == {"extra": "no SE"}
    assert not by_label(trials, 3)["no SE"].config.se.enabled
    assert {t.seed for t in expand(spec, seeds=1)} == {0}


def test_resolution_order_is_recipe_then_base_then_grid_then_set():
    spec = parse_spec(spec_of(
        recipe="cifar_fast",  # epochs 30, lr 0.2, batch 256, wd 5e-4, label smoothing 0.1
        base={"train": {"epochs": 5, "lr": 0.05, "batch_size": 64}},
        grid={"train.batch_size": [32]},
    ))  # fmt: skip
    (trial,) = expand(spec, {"train.epochs": 2, "train.weight_decay": 0.0})
    t = trial.config.train
    assert t.label_smoothing == RECIPES["cifar_fast"]["train.label_smoothing"] == 0.1  # recipe only
    assert t.lr == 0.05  # base over recipe
    assert t.batch_size == 32  # grid over base and recipe
    assert t.epochs == 2  # --set over base
    assert t.weight_decay == 0.0  # --set over recipe


def test_equal_configs_spelled_differently_share_a_hash_and_seeds_split_the_key():
    nested = expand(parse_spec(spec_of(base={"model": {"name": "resnet20"}, "se": {"reduction": 8}},
                                       extra=[{"label": "a", "set": {}}], seeds=2)))  # fmt: skip
    dotted = expand(parse_spec(spec_of(base={"model.name": "resnet20", "se.reduction": 8},
                                       grid={"model.shortcut": ["A"]}, seeds=2)))  # fmt: skip
    assert [t.key for t in nested] == [t.key for t in dotted]
    s0, s1 = nested
    assert s0.config_hash == s1.config_hash and s0.key != s1.key
    assert (s0.key, s1.key) == (f"{s0.config_hash}-s0", f"{s0.config_hash}-s1")
    # all stages spelled out is SE everywhere, the same network as `null`: one trial, two names
    (trial,) = expand(parse_spec(spec_of(base={"model.name": "resnet20"}, grid={"se.stages": [[2, 3, 4], None]})))
    assert trial.label == "se.stages=[2, 3, 4]"


def test_paper_runs_each_shared_configuration_once_and_lists_every_table_it_belongs_to():
    trials = expand(load_spec("paper"))
    assert len(trials) == len({t.key for t in trials}) == TRIALS["paper"]
    standard = [t for t in trials if load_spec(t.study).is_reference(t.config) and t.config.se.enabled]
    assert [t.seed for t in standard] == [0, 1, 2]
    assert all(t.studies == tuple(TABLES) for t in standard)
    first = standard[0]
    assert first.study == "reduction_ratio" and first.labels[:3] == ("se.reduction=16", "se.squeeze=avg",
                                                                      "se.excitation=sigmoid")  # fmt: skip
    no_se = [t for t in trials if not t.config.se.enabled]
    assert len(no_se) == 3
    assert no_se[0].studies == ("reduction_ratio", "excitation", "stages", "no_squeeze")
    assert set(no_se[0].labels) == {"no SE"}


@pytest.mark.parametrize("name", sorted(TRIALS))
def test_every_shipped_study_loads_expands_and_validates(name):
    spec = load_spec(name)
    assert spec.name == name and spec.description.strip()
    assert spec.mirrors or name in ("fmnist_se", *SEARCHES)  # the CPU sanity study and the searches mirror no table
    trials = expand(spec)
    if name in SEARCHES:
        from ablations.study.search_plan import plan_designs

        designs, sampled = plan_designs(spec, Host("cpu"))
        assert spec.search_only and not sampled and len(designs) == SEARCHES[name]
        assert any(d.feasible for d in designs) and len({d.config.config_hash() for d in designs}) == len(designs)
        assert trials == []
        return
    assert len(trials) == TRIALS[name]
    for t in trials:
        level = with_data_seed(t.config, SEED_LINKED) if spec.vary_data_seed else t.config  # the seeds' shared hash
        again = build_config(level.model_dump())
        assert again.config_hash() == t.config_hash and t.key == f"{t.config_hash}-s{t.seed}"
    if name in TABLES:
        assert all(t.config.model.name == "resnet56" and t.config.data.dataset == "cifar10" for t in trials)
        assert all(t.config.train.epochs == 30 and not t.config.se.bias for t in trials if t.config.se.enabled)
        assert expand(spec, {"data.dataset": "fashion_mnist"})[0].config.data.dataset == "fashion_mnist"
    assert sum(spec.is_reference(t.config) for t in trials if t.study == name) >= 1 or name == "paper"


def test_list_studies_is_every_shipped_file():
    assert [s.name for s in list_studies()] == shipped_names() == sorted(TRIALS)


def test_demo_is_table_12_in_miniature_on_fashion_mnist():
    trials = expand(load_spec("demo"))
    assert len(trials) == 8 and {t.seed for t in trials} == {0, 1}
    assert {t.config.data.dataset for t in trials} == {"fashion_mnist"}
    assert {t.label for t in trials} == {f"se.excitation={g}" for g in ("sigmoid", "tanh", "relu")} | {"no SE"}
    assert {t.config.model.name for t in trials} == {"resnet14"}
    # The description's budget, as measured on 2 CPU cores: two warm workers train ResNet-14 on 28x28 at ~460
    # images/s each and evaluate ~1200/s; a warm worker pays ~1 s per trial, the sweep ~15 s to start. All 8
    # runs must fit in 5 minutes with room to spare (measured: 4 min 2 s).
    seconds = sum(
        t.config.data.train_subset * t.config.train.epochs / 460
        + (t.config.data.val_subset * t.config.train.epochs + t.config.data.test_subset) / 1200
        + 1
        for t in trials
    )
    assert 120 < seconds / 2 + 15 < 300


def test_plan_has_one_row_per_trial_with_cost_at_the_data_size():
    trials = expand(load_spec("demo"))
    df = plan(trials)
    assert list(df["key"]) == [t.key for t in trials]
    for col in ("config_hash", "seed", "label", "se.excitation", "extra", "params", "gflops", "epochs"):
        assert col in df.columns
    no_se = df[df["label"] == "no SE"].iloc[0]
    # one input channel for Fashion-MNIST: the 3x3 stem conv has 16*9*2 fewer weights than the RGB default
    assert no_se["params"] == model_info("resnet14").num_params - 16 * 9 * 2
    se = df[df["label"] == "se.excitation=sigmoid"].iloc[0]
    assert se["params"] > no_se["params"] and se["gflops"] > no_se["gflops"] > 0
    assert se["se.excitation"] == "sigmoid" and se["extra"] is None and no_se["extra"] == "no SE"
    cifar = plan(expand(load_spec("reduction_ratio"), seeds=1))
    assert list(cifar["se.reduction"].dropna()) == [2, 4, 8, 16, 32]
    assert cifar["gflops"].iloc[0] > no_se["gflops"]  # 32x32 against 28x28, 56 layers against 20


def test_reference_is_the_standard_se_level_of_the_study():
    trials = expand(load_spec("stages"), seeds=1)
    refs = [t.label for t in trials if load_spec("stages").is_reference(t.config)]
    assert refs == ["se.stages=null"]
    assert load_spec("demo").reference == STANDARD_SE
    custom = parse_spec(spec_of(grid={"se.reduction": [4, 8]}, reference={"se": {"reduction": 8}}))
    assert [t.label for t in expand(custom) if custom.is_reference(t.config)] == ["se.reduction=8"]


@pytest.mark.parametrize(
    ("study", "overrides", "message"),
    [
        ("reduction_ratio", {"se.reduction": 8}, "--set se.reduction: study 'reduction_ratio' varies this key"),
        ("reduction_ratio", {"se.enabled": True}, "--set se.enabled: study 'reduction_ratio' varies this key"),
        ("paper", {"se.placement": "pre"}, "--set se.placement: study 'integration' varies this key"),
        ("demo", {"train.lrr": 0.1}, "--set train.lrr: unknown key; allowed in train: epochs"),
        ("demo", {"train.lr": 0}, "--set train.lr: Input should be greater than 0 (got 0)"),
        ("demo", {"seed": 3}, "--set seed: trial seeds come from the study's `seeds`"),
        ("demo", {"se.stages": [5]}, "demo.yaml: --set: se.stages: stage 5 does not exist in resnet14"),
    ],
)
def test_bad_overrides_name_the_key(study, overrides, message):
    with pytest.raises(SenetError) as err:
        expand(load_spec(study), overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_includes_resolve_next_to_the_including_file_and_dedup(tmp_path):
    write(tmp_path, yaml.safe_dump(spec_of(name="child", grid={"se.reduction": [4, 16]})), "child.yaml")
    parent = write(tmp_path, yaml.safe_dump(spec_of(name="parent", grid={"se.reduction": [16]},
                                                    include=["child.yaml", "squeeze"])))  # fmt: skip
    trials = expand(load_spec(parent))
    assert [(t.study, t.label) for t in trials] == [
        ("parent", "se.reduction=16"), ("child", "se.reduction=4"), ("squeeze", "se.squeeze=avg"),
        ("squeeze", "se.squeeze=avg"), ("squeeze", "se.squeeze=avg"), ("squeeze", "se.squeeze=max"),
        ("squeeze", "se.squeeze=max"), ("squeeze", "se.squeeze=max"),
    ]  # fmt: skip
    assert trials[0].studies == ("parent", "child") and trials[0].labels == ("se.reduction=16", "se.reduction=16")


BASE = "name: t\ndescription: a test study\n"
GRID = "grid: {se.reduction: [4, 16]}\n"
MALFORMED = {
    "unknown top-level key": (BASE + GRID + "colour: red\n", "colour: unknown key; allowed: name, description"),
    "unknown base key": (BASE + GRID + "base: {train: {lrr: 0.1}}\n", "base.train.lrr: unknown key; allowed in train"),
    "unknown base section": (BASE + GRID + "base: {optim: {lr: 1}}\n", "base.optim.lr: unknown key; allowed sections"),
    "wrong type": (BASE + GRID + "base: {train: {lr: fast}}\n", "base.train.lr: Input should be a valid number"),
    "wrong type of a field": ("name: t\ndescription: 5\n" + GRID, "description: Input should be a valid string"),
    "missing field": ("name: t\n" + GRID, "description: required field is missing"),
    "bad name": ("name: My Study\ndescription: d\n" + GRID, "name: 'My Study' is not allowed; allowed: lowercase"),
    "value outside allowed set": (BASE + "grid: {se.squeeze: [avg, mean]}\n",
                                  "grid.se.squeeze[1]: 'mean' is not allowed; allowed: 'avg', 'max', 'none'"),
    "value out of range": (BASE + "grid: {se.reduction: [4, 8, 0]}\n",
                           "grid.se.reduction[2]: 0 is not allowed; allowed: an integer >= 1, or a map stage"),
    "unknown grid key": (BASE + "grid: {se.reductio: [4]}\n", "grid.se.reductio: unknown key; allowed in se: enabled"),
    "grid over the seed": (BASE + "grid: {seed: [1, 2]}\n", "grid.seed: trial seeds come from the study's `seeds`"),
    "empty grid list": (BASE + "grid: {se.reduction: []}\n", "grid.se.reduction: must be a non-empty list of levels"),
    "grid level not a list": (BASE + "grid: {se.reduction: 8}\n", "grid.se.reduction: must be a non-empty list"),
    "duplicate levels": (BASE + "grid: {se.reduction: [4, 8, 4]}\n",
                         "grid.se.reduction[2]: 4 repeats grid.se.reduction[0]; give each level once"),
    "no trials": (BASE, "grid: study 't' has no trials; give a grid, extra configurations, include or a search"),
    "contradictory grid level": (BASE + "base: {model: {name: resnet56}}\ngrid: {se.stages: [[2], [5]]}\n",
                                 "grid (se.stages=[5]): se.stages: stage 5 does not exist in resnet56; allowed: 2, 3"),
    "contradictory base": (BASE + GRID + "base: {model: {name: resnet20}, se: {stages: [5]}}\n",
                           "base: se.stages: stage 5 does not exist in resnet20"),
    "unknown extra set key": (BASE + "extra: [{label: x, set: {se.enabld: false}}]\n",
                              "extra[0].set.se.enabld: unknown key; allowed in se: enabled"),
    "unknown extra field": (BASE + "extra: [{label: x, sett: {}}]\n", "extra[0].sett: unknown key; allowed: label"),
    "duplicate extra label": (BASE + "extra: [{label: x}, {label: x, set: {se.enabled: false}}]\n",
                              "extra[1].label: 'x' is used twice"),
    "zero seeds": (BASE + GRID + "seeds: 0\n", "seeds: 0 is not allowed; allowed: a count 1..10000 or a list"),
    "a billion seeds": (BASE + GRID + "seeds: 1000000000\n", "seeds: 1000000000 is not allowed; allowed: a count 1."),
    "repeated seed": (BASE + GRID + "seeds: [0, 1, 1]\n", "seeds[2]: seed 1 is listed twice"),
    "negative seed": (BASE + GRID + "seeds: [0, -1]\n", "seeds[1]: -1 is not allowed; allowed: an integer in 0."),
    "seeds not a number": (BASE + GRID + "seeds: three\n", "seeds: 'three' is not allowed"),
    "unknown include": (BASE + "include: [demo, foo]\n",
                        "include[1]: 'foo' is not a study; allowed: cifar_search, cifar_table4"),
    "unknown mirrors key": (BASE + GRID + "mirrors: [table10]\n",
                            "mirrors[0]: 'table10' is not a table of the paper; allowed: table1_se_resnet50"),
    "unknown recipe": (BASE + GRID + "recipe: fast\n", "recipe: 'fast' is not a recipe; allowed: he2016_cifar"),
    "reference not among the levels": (BASE + "grid: {se.reduction: [4, 8]}\n",
                                       "reference: se.reduction=16 matches no trial; name one of its levels, e.g. "
                                       "reference: {se.reduction: 4}"),
    "unknown reference key": (BASE + GRID + "reference: {se.reductio: 4}\n", "reference.se.reductio: unknown key"),
    "invalid YAML": (BASE + "grid: {se.reduction: [4, 8}\n", "study.yaml, line 3: not valid YAML (expected ','"),
    "not a mapping": ("- name: t\n- grid: {}\n", "study.yaml: a study spec must be a mapping of fields"),
    "empty file": ("", "study.yaml: a study spec must be a mapping of fields (name, description, grid, ...), got an"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_each_malformed_spec_gets_one_line_naming_the_field(tmp_path, case):
    text, message = MALFORMED[case]
    path = write(tmp_path, text)
    with pytest.raises(SenetError) as err:
        expand(load_spec(path))
    assert message in str(err.value)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_a_yaml_alias_bomb_is_refused_before_anything_expands_it(tmp_path, capsys):
    """Item 15: aliases of aliases in a text field expanded to gigabytes before validation."""
    levels = ["description: &a [x, x, x, x, x, x, x, x, x]"]
    levels += [
        f"l{i}: &{c} [{', '.join([f'*{p}'] * 9)}]" for i, (p, c) in enumerate(zip("abcdefg", "bcdefgh", strict=True), 1)
    ]
    path = write(tmp_path, "\n".join(["name: bomb", *levels, "grid: {se.reduction: [4]}"]) + "\n")
    with pytest.raises(SenetError, match="aliases .* expand to more than 100000 values") as err:
        load_spec(path)
    assert len(str(err.value)) < 300


def test_include_cycle_names_the_chain(tmp_path):
    write(tmp_path, "name: a\ndescription: d\ninclude: [b.yaml]\n", "a.yaml")
    write(tmp_path, "name: b\ndescription: d\ngrid: {se.reduction: [16]}\ninclude: [a.yaml]\n", "b.yaml")
    with pytest.raises(SenetError, match=r"b\.yaml: include\[0\]: cycle a → b → a"):
        load_spec(tmp_path / "a.yaml")
    self_loop = write(tmp_path, "name: c\ndescription: d\ninclude: [c.yaml]\n", "c.yaml")
    with pytest.raises(SenetError, match=r"include\[0\]: cycle c → c"):
        load_spec(self_loop)


def test_missing_file_and_unknown_study_name_what_exists(tmp_path):
    with pytest.raises(SenetError, match=r"missing\.yaml: no such study file; give a path to a \.yaml file or one of"):
        load_spec(tmp_path / "missing.yaml")
    with pytest.raises(SenetError, match=r"study: 'nosuch' is not a study; allowed: cifar_search, cifar_table4, demo"):
        load_spec("nosuch")


def test_a_million_trials_are_refused_before_the_grid_is_expanded(tmp_path, monkeypatch, capsys):
    """Item 13 (issue 19): MAX_TRIALS was checked after the grid was expanded, so a small spec of 10^6 trials cost
    minutes of CPU and gigabytes before the refusal."""
    grid = {
        "train.lr": [0.01 * (i + 1) for i in range(10)],
        "train.momentum": [i / 20 for i in range(10)],
        "train.weight_decay": [1e-5 * (i + 1) for i in range(10)],
        "train.epochs": list(range(1, 11)),
        "train.batch_size": list(range(1, 11)),
        "se.reduction": list(range(1, 11)),
    }
    path = write(tmp_path, yaml.safe_dump(spec_of(name="huge", grid=grid, seeds=1)))
    spec = load_spec(path)

    def never(*args, **kwargs):
        raise AssertionError("a point of the grid was expanded")

    monkeypatch.setattr(trials_mod, "resolve_point", never)
    monkeypatch.setattr(StudySpec, "points", never)
    message = rf"^{path}: 1000000 trials; allowed: at most 100000 in one sweep$"
    with pytest.raises(SenetError, match=message):
        plan_trials(spec, {}, Host("cpu"))
    with pytest.raises(SenetError, match=rf"^{path}: 2000000 trials"):
        expand(spec, seeds=2)
    assert main(["sweep", str(path), "--dry-run", "--results", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.count("\n") == 1 and not (tmp_path / "r").exists()


@pytest.mark.parametrize("dry_run", [True, False])
def test_a_subset_larger_than_the_dataset_is_exit_2_before_anything_is_written(tmp_path, capsys, dry_run):
    """Item 16 (issue 19): data sizes were checked only in the worker: exit 1 after the sweep had written its
    ledger and MLflow runs. Fashion-MNIST's sizes are known without reading its files."""
    path = tmp_path / "big.yaml"
    base = {"data": {"dataset": "fashion_mnist", "train_subset": 100_000}, "train": {"epochs": 1}}
    path.write_text(yaml.safe_dump(spec_of(name="big", base=base, grid={"se.reduction": [8, 16]}, seeds=1)))
    results = tmp_path / "r"
    args = ["sweep", str(path), "--results", str(results), "--no-progress", *(["--dry-run"] if dry_run else [])]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "data.train_subset: 100000 is not allowed; allowed: 1..55000" in err
    assert err.startswith(f"senet-ablate: error: {path}: base: ") and not results.exists()
    assert main(["sweep", "demo", "--set", "data.workers=-1", "--dry-run", "--results", str(results)]) == 2
    assert "--set data.workers: Input should be greater than or equal to 0" in capsys.readouterr().err


def test_a_grid_over_per_stage_reductions_from_yaml():
    """Per-stage r as a YAML map (a bare `off` reads as false): each level is labelled as typed, with `off`; a level
    that builds the same network as another (r = 16 on every stage) is that trial, as equal stages are."""
    levels = "[16, {2: 4, 3: 8, 4: 16}, {2: off, 3: 16}, {2: 16, 3: 16, 4: 16}]"
    text = BASE + f"base: {{model.name: resnet20}}\ngrid:\n  se.reduction: {levels}\n"
    spec = parse_spec(yaml.safe_load(text))
    trials = [t for t in expand(spec) if t.seed == 0]
    assert [t.label for t in trials] == ["se.reduction=16", "se.reduction={2: 4, 3: 8, 4: 16}",
                                         "se.reduction={2: off, 3: 16}"]  # fmt: skip
    assert trials[2].config.se.reduction == {2: None, 3: 16}
    assert trials[2].config.identity()["se"] == {"stages": [3]}  # r = 16 on stage 3 alone (16 is the default)

"""Pure helpers of benchmarks/: mean ± std and ratios, the interleaving order, the RESULTS.md section writer and the
code version it records."""

import pytest
import torch

from ablations import tracking
from benchmarks._report import HEADER, code_version, write_section
from benchmarks._timing import Clock, Plan, Summary, interleave, ratios


def test_summary_is_mean_and_sample_std():
    s = Summary.of([1.0, 2.0, 3.0, 4.0])
    assert (s.mean, s.n) == (2.5, 4)
    assert s.std == pytest.approx(1.2909944, rel=1e-6)  # n - 1 in the denominator
    assert Summary.of([0.5]).std == 0.0
    assert s.format(2) == "2.50 ± 1.29"
    assert s.scaled(1e3).format(0, " ms") == "2,500 ± 1,291 ms"


def test_ratios_are_per_round_and_need_equal_rounds():
    assert ratios([2.0, 3.0], [1.0, 2.0]) == [2.0, 1.5]
    with pytest.raises(ValueError, match="same rounds"):
        ratios([1.0], [1.0, 2.0])


def test_interleave_alternates_the_order_and_stops_at_the_round_limits():
    calls: list[str] = []
    variants = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    plan = Plan(warmup=1, steps=2, min_rounds=3, max_rounds=3, budget_s=0.0)
    samples = interleave(variants, plan, Clock(torch.device("cpu")), log=lambda _: None)
    assert calls[:3] == ["a", "b", "c"]  # warm-up
    rounds = calls[3:]
    assert rounds == ["a", "a", "b", "b", "c", "c", "c", "c", "b", "b", "a", "a", "a", "a", "b", "b", "c", "c"]
    assert {k: len(v) for k, v in samples.items()} == {"a": 3, "b": 3, "c": 3}


def test_write_section_replaces_its_own_device_and_keeps_the_others(tmp_path):
    path = tmp_path / "RESULTS.md"
    cpu_old = "<!-- bench:cpu -->\n## CPU\nold\n<!-- /bench:cpu -->\n"
    gpu = "<!-- bench:cuda -->\n## GPU\nkept\n<!-- /bench:cuda -->\n"
    write_section(path, "cpu", cpu_old)
    write_section(path, "cuda", gpu)
    write_section(path, "cpu", cpu_old.replace("old", "new"))
    text = path.read_text()
    assert text.startswith(HEADER)
    assert "new" in text and "old" not in text and "kept" in text
    assert text.index("## CPU") < text.index("## GPU")


def test_code_version_is_trackings_sha_shortened_with_its_dirty_flag(monkeypatch):
    versions = iter([{"git_sha": "0123456789abcdef", "git_dirty": "true"},
                     {"git_sha": "0123456789abcdef", "git_dirty": "false"},
                     {"git_sha": "unknown", "git_dirty": "false"}])  # fmt: skip
    monkeypatch.setattr(tracking, "code_version", lambda: next(versions))
    assert [code_version() for _ in range(3)] == ["0123456 (dirty)", "0123456", "unknown (not a git checkout)"]

"""The GPU check's set-up on a host without a GPU (its steps need one)."""

from pathlib import Path

from benchmarks import gpu_check


def test_a_relative_data_folder_is_made_absolute_before_any_step(tmp_path, monkeypatch):
    """Issue 20, item 5: the harness step runs from a temporary folder, where the README's relative --data was
    another folder."""
    monkeypatch.chdir(tmp_path)
    assert gpu_check.data_folder(Path("fashion")) == tmp_path / "fashion"

"""build/results.json: merged keys, metadata, atomic writes, JSON-safe values."""
import json

import numpy as np
import pytest

from helpers.course import results


@pytest.fixture
def results_file(tmp_path, monkeypatch):
    path = tmp_path / "build" / "results.json"
    monkeypatch.setenv(results.ENV_RESULTS, str(path))
    return path


def test_record_merges_keys_across_calls(results_file):
    results.record("probe.fc7", np.float32(0.9), mode="quick")
    results.record("cv.head_only.folds", np.array([0.8, 0.85]), mode="quick")
    data = json.loads(results_file.read_text())
    assert data["results"]["probe.fc7"] == pytest.approx(0.9)
    assert data["results"]["cv.head_only.folds"] == [0.8, 0.85]
    assert data["meta"]["mode"] == "quick"
    assert "numpy" in data["meta"]["versions"] and "updated" in data["meta"]
    assert results.get("probe.fc7") == pytest.approx(0.9)


def test_record_returns_the_value_and_stores_nan_as_null(results_file):
    assert results.record("x", 3, mode="quick") == 3
    results.record("bad", float("nan"), mode="quick")
    assert json.loads(results_file.read_text())["results"]["bad"] is None


def test_reset_starts_a_fresh_file(results_file):
    results.record("old", 1, mode="quick")
    results.reset("full")
    data = json.loads(results_file.read_text())
    assert data["results"] == {} and data["meta"]["mode"] == "full"


def test_unstorable_values_are_refused_and_the_file_is_untouched(results_file):
    results.record("a", 1, mode="quick")
    before = results_file.read_text()
    with pytest.raises(TypeError, match="cannot store object"):
        results.record("b", object(), mode="quick")
    assert results_file.read_text() == before
    assert not list(results_file.parent.glob(".*part*"))


def test_a_named_notebook_also_gets_its_own_results_file(results_file, monkeypatch):
    monkeypatch.setenv(results.ENV_NOTEBOOK, "04_head_finetuning")
    results.record("head_only.test_accuracy", 0.8, mode="quick")
    monkeypatch.setenv(results.ENV_NOTEBOOK, "05_full_finetuning")
    results.record("finetune.best", "last_block", mode="quick")
    own4 = results_file.parent / "results" / "04_head_finetuning.json"
    own5 = results.notebook_results_path()
    assert own5 == results_file.parent / "results" / "05_full_finetuning.json"
    assert json.loads(own4.read_text())["results"] == {"head_only.test_accuracy": 0.8}
    assert json.loads(own5.read_text())["results"] == {"finetune.best": "last_block"}
    merged = json.loads(results_file.read_text())["results"]
    assert merged == {"head_only.test_accuracy": 0.8, "finetune.best": "last_block"}


def test_no_notebook_no_own_file_and_odd_names_are_refused(results_file, monkeypatch):
    monkeypatch.delenv(results.ENV_NOTEBOOK, raising=False)
    assert results.notebook_results_path() is None
    results.record("a", 1, mode="quick")
    assert not (results_file.parent / "results").exists()
    monkeypatch.setenv(results.ENV_NOTEBOOK, "../escape")
    with pytest.raises(ValueError, match="COURSE_NOTEBOOK"):
        results.record("b", 2, mode="quick")

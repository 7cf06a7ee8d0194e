"""The course runner: plan, parameter injection, failures named by notebook and cell."""
import json

import nbformat
import pytest

from helpers.course import runner, paths, results


def write_nb(path, cells):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for kind, src, *tags in cells:
        cell = nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src)
        if tags:
            cell.metadata["tags"] = tags[0]
        nb.cells.append(cell)
    nbformat.write(nb, path)
    return path


@pytest.fixture
def course_env(tmp_path, monkeypatch):
    monkeypatch.setenv(paths.ENV_HOME, str(tmp_path / "home"))
    monkeypatch.setenv(results.ENV_RESULTS, str(tmp_path / "build" / "results.json"))
    monkeypatch.delenv(paths.ENV_MODE, raising=False)
    built = []
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    write_nb(nbdir / "00_first.ipynb", [
        ("md", "# First notebook"),
        ("code", 'MODE = "auto"\nEPOCHS = 1', ["parameters"]),
        ("code", "import os, sys\nsys.path.insert(0, os.environ['REPO_ROOT'])\n"
                 "from helpers.course import results\nresults.record('first.mode', MODE)\nresults.record('first.epochs', EPOCHS)"),
    ])
    write_nb(nbdir / "01_second.ipynb", [
        ("md", "# Second notebook"),
        ("code", "x = 1"),
        ("code", "raise ValueError('broken on purpose')"),
        ("code", "y = 2"),
    ])
    write_nb(nbdir / "02_third.ipynb", [("md", "# Third"), ("code", "z = 3")])
    (nbdir / "scratch.ipynb").write_text("{}")  # not numbered: not part of the course
    monkeypatch.setenv("REPO_ROOT", str(paths.REPO_ROOT))
    return {"nbdir": nbdir, "out": tmp_path / "executed", "built": built, "prepare": lambda: built.append(1), "results": tmp_path / "build" / "results.json"}


def test_discover_keeps_numbered_notebooks_in_order(course_env):
    names = [p.name for p in runner.discover_notebooks(course_env["nbdir"])]
    assert names == ["00_first.ipynb", "01_second.ipynb", "02_third.ipynb"]


def test_select_by_number_list_and_name(course_env):
    nbs = runner.discover_notebooks(course_env["nbdir"])
    assert [p.stem for p in runner.select(nbs, ["2"])] == ["02_third"]
    assert [p.stem for p in runner.select(nbs, ["02,00"])] == ["00_first", "02_third"]
    assert [p.stem for p in runner.select(nbs, ["01_second"])] == ["01_second"]
    with pytest.raises(SystemExit, match="matches no notebook"):
        runner.select(nbs, ["07"])


def test_parameters_are_injected_after_the_parameters_cell():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("a = 1"), nbformat.v4.new_code_cell("MODE = 'auto'")]
    nb.cells[1].metadata["tags"] = ["parameters"]
    i = runner.inject_parameters(nb, {"MODE": "quick", "EPOCHS": 2})
    assert i == 2 and nb.cells[2].metadata["tags"] == ["injected-parameters"]
    assert "MODE = 'quick'" in nb.cells[2].source and "EPOCHS = 2" in nb.cells[2].source
    runner.inject_parameters(nb, {"MODE": "full"})  # re-injection replaces, never stacks
    assert sum("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells) == 1


def test_runner_executes_injects_records_and_names_the_failing_cell(course_env, capsys):
    code, outcomes = runner.run(mode="quick", output_dir=course_env["out"], notebooks_dir=course_env["nbdir"],
                                extra_parameters={"EPOCHS": 3}, keep_going=False,
                                prepare_quick=course_env["prepare"])
    assert code == 1
    assert [o.status for o in outcomes] == ["ok", "failed", "skipped"]
    failed = outcomes[1]
    assert failed.failed_cell == 3  # markdown, x = 1, raise: the third cell, counted as Jupyter shows them
    assert "01_second.ipynb" in failed.error and "cell 3" in failed.error and "broken on purpose" in failed.error
    err = capsys.readouterr().err
    assert "01_second.ipynb, cell 3" in err
    data = json.loads(course_env["results"].read_text())
    assert data["results"]["first.mode"] == "quick" and data["results"]["first.epochs"] == 3
    assert data["meta"]["mode"] == "quick"
    assert (course_env["out"] / "00_first.ipynb").is_file()
    assert (course_env["out"] / "01_second.ipynb").is_file()  # the failing copy is kept to inspect
    assert course_env["built"] == [1]  # quick mode prepared the synthetic world once


def test_keep_going_runs_the_rest_and_still_fails(course_env, capsys):
    code, outcomes = runner.run(mode="quick", only=["01", "02"], keep_going=True,
                                output_dir=course_env["out"], notebooks_dir=course_env["nbdir"],
                                prepare_quick=course_env["prepare"])
    assert code == 1 and [o.status for o in outcomes] == ["failed", "ok"]
    assert "total" in capsys.readouterr().out


def test_full_mode_with_missing_assets_exits_nonzero_listing_them(course_env, capsys):
    code, outcomes = runner.run(mode="full", notebooks_dir=course_env["nbdir"], output_dir=course_env["out"])
    assert code == 2 and outcomes == []
    err = capsys.readouterr().err
    assert "VGG_FACE.caffemodel" in err and "helpers.assets fetch" in err and "fold_0_data.txt" in err


def test_list_shows_the_plan_and_the_mode_reason(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv(paths.ENV_HOME, str(tmp_path))
    monkeypatch.delenv(paths.ENV_MODE, raising=False)
    assert runner.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "quick mode (auto" in out and "00_setup.ipynb" in out


def test_badges_and_clone_urls_derive_from_one_constant():
    readme = (paths.REPO_ROOT / "README.md").read_text()
    for nb in runner.discover_notebooks():
        assert runner.colab_url(nb.name) in readme, f"README lacks the Colab link of {nb.name}"
        text = nb.read_text()
        assert runner.colab_url(nb.name) in text, f"{nb.name} lacks its own Colab badge"
        if "git clone" in text:
            assert runner.clone_url() in text

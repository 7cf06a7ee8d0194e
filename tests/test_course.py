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


def test_cell_timeout_follows_the_mode_unless_given(course_env, monkeypatch):
    """Full mode's cells may run for hours (05's comparison on a T4), quick mode's and SMOKE runs' not."""
    seen = []

    def fake_execute(path, parameters, output_dir, cell_timeout, **kw):
        seen.append(cell_timeout)
        return runner.NotebookResult(path.stem, status="ok")

    monkeypatch.setattr(runner, "execute_notebook", fake_execute)
    monkeypatch.setattr(paths, "missing_full_assets", lambda: [])
    opts = dict(only=["02"], output_dir=course_env["out"], notebooks_dir=course_env["nbdir"],
                prepare_quick=course_env["prepare"])
    runner.run(mode="quick", **opts)
    runner.run(mode="full", **opts)
    runner.run(mode="full", extra_parameters={"SMOKE": True}, **opts)
    runner.run(mode="full", cell_timeout=60, **opts)
    assert seen == [runner.CELL_TIMEOUT["quick"], runner.CELL_TIMEOUT["full"], runner.CELL_TIMEOUT_SMOKE, 60]
    assert runner.CELL_TIMEOUT["full"] >= 3 * 3600 > runner.CELL_TIMEOUT["quick"]


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
        assert runner.clone_url() in text, f"{nb.name}'s Setup cell does not clone {runner.clone_url()}"


# ----------------------------------------------------------------------------- every notebook's Setup

STANDARD_PARAMETERS = '''MODE = "auto"       # "quick", "full" or "auto" (full when the real assets are present)
SEED = 42
SMOKE = False       # True: every size and epoch count at its minimum, to check that everything runs
SUBSET = 1.0        # full mode: the share of Adience's users to use (whole users, every fold kept)
USE_DRIVE = None    # Colab: keep weights/, data/ and build/ on Google Drive (None: yes whenever on Colab)'''


@pytest.mark.parametrize("notebook", runner.discover_notebooks(), ids=lambda p: p.stem)
def test_every_notebook_starts_with_the_one_bootstrap_then_parameters_then_start(notebook):
    nb = nbformat.read(notebook, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code[0].source == runner.bootstrap_source(), (
        f"{notebook.name}: the first code cell is not the course's Setup bootstrap; run python -m helpers.course --sync-links")
    at = next(i for i, c in enumerate(code) if "parameters" in c.metadata.get("tags", []))
    assert code[at].source.startswith(STANDARD_PARAMETERS), f"{notebook.name}: the parameters cell must start with the five standard lines"
    starts = [i for i, c in enumerate(code) if "environment.start(MODE, seed=SEED, smoke=SMOKE, subset=SUBSET, use_drive=USE_DRIVE" in c.source]
    assert starts and starts[0] > at, f"{notebook.name}: environment.start(...) must follow the parameters cell"


def test_the_bootstrap_is_plain_python_that_clones_on_colab_only(tmp_path):
    """Run the bootstrap in a plain interpreter: in a checkout it finds helpers/; on a 'Colab'
    runtime outside any checkout it clones (here from a local repository, via git's insteadOf)."""
    import subprocess
    import sys

    script = tmp_path / "bootstrap.py"
    script.write_text(runner.bootstrap_source() + "\nprint('ROOT', ROOT, 'CWD', Path.cwd())\n")
    here = subprocess.run([sys.executable, str(script)], cwd=paths.REPO_ROOT / "notebooks", capture_output=True, text=True)
    assert here.returncode == 0, here.stderr
    assert f"ROOT {paths.REPO_ROOT} " in here.stdout and "Installing" not in here.stdout
    outside = tmp_path / "content"
    outside.mkdir()
    env = {k: v for k, v in __import__("os").environ.items() if k != "COLAB_RELEASE_TAG"}
    lost = subprocess.run([sys.executable, str(script)], cwd=outside, capture_output=True, text=True, env=env)
    assert lost.returncode != 0 and "no helpers/ folder" in lost.stderr
    source = runner.snapshot_checkout(tmp_path / "snapshot")
    env.update({"COLAB_RELEASE_TAG": "test", "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": f"url.{source}.insteadOf",
                "GIT_CONFIG_VALUE_0": runner.clone_url(), "PYTHONPATH": ""})
    colab = subprocess.run([sys.executable, str(script)], cwd=outside, capture_output=True, text=True, env=env)
    assert colab.returncode == 0, colab.stderr
    clone = outside / "vggface-gender-course"
    assert f"ROOT {clone} CWD {clone / 'notebooks'}" in colab.stdout
    assert "All required packages are present" in colab.stdout  # install_missing ran, and had nothing to do
    assert (clone / "helpers" / "course" / "runner.py").read_text() == (paths.REPO_ROOT / "helpers/course/runner.py").read_text()


def test_sync_links_rewrites_badges_and_the_bootstrap_keeping_the_json_layout(tmp_path, monkeypatch):
    import json

    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    readme = tmp_path / "README.md"
    readme.write_text(f"| 00 | {runner.colab_badge('00_x.ipynb')} |\n")
    nb = {"cells": [{"cell_type": "markdown", "id": "a", "metadata": {}, "source": [runner.colab_badge("00_x.ipynb")]},
                    {"cell_type": "code", "execution_count": None, "id": "b", "metadata": {}, "outputs": [],
                     "source": ["import sys\n", "# an old bootstrap"]},
                    {"cell_type": "code", "execution_count": None, "id": "c", "metadata": {}, "outputs": [],
                     "source": ["x = 1"]}],
          "metadata": {"zeta": 1, "alpha": 2}, "nbformat": 4, "nbformat_minor": 5}
    (nbdir / "00_x.ipynb").write_text(json.dumps(nb, indent=1) + "\n")
    monkeypatch.setattr(runner, "GITHUB_REPO", "someone/fork")
    changed = runner.sync_links(readme, runner.discover_notebooks(nbdir))
    assert set(changed) == {readme, nbdir / "00_x.ipynb"}
    assert "someone/fork" in readme.read_text()
    out = json.loads((nbdir / "00_x.ipynb").read_text())
    assert "".join(out["cells"][1]["source"]) == runner.bootstrap_source() and "someone/fork" in runner.bootstrap_source()
    assert out["cells"][2]["source"] == ["x = 1"] and list(out["metadata"]) == ["zeta", "alpha"]  # order kept
    assert runner.sync_links(readme, runner.discover_notebooks(nbdir)) == []  # idempotent


# ----------------------------------------------------------------------------- kernels, results, Colab simulation

def test_each_kernel_knows_its_notebook_and_gets_its_own_results_file(course_env):
    code, outcomes = runner.run(mode="quick", only=["00"], output_dir=course_env["out"],
                                notebooks_dir=course_env["nbdir"], prepare_quick=course_env["prepare"])
    assert code == 0
    own = outcomes[0].results_file
    assert own == course_env["results"].parent / "results" / "00_first.json"
    assert set(json.loads(own.read_text())["results"]) == {"first.mode", "first.epochs"}
    assert outcomes[0].peak_rss_mb is None or outcomes[0].peak_rss_mb > 10  # a Python kernel's resident memory


def _bootstrap_notebook(path, *lines):
    """A notebook whose first cell is the real Setup bootstrap, then the standard parameters."""
    write_nb(path, [
        ("md", "# A"),
        ("code", runner.bootstrap_source()),
        ("code", STANDARD_PARAMETERS, ["parameters"]),
        ("code", "\n".join(lines)),
    ])


def test_the_colab_simulation_gives_each_notebook_a_fresh_runtime_and_shares_only_drive(tmp_path, monkeypatch):
    monkeypatch.delenv(paths.ENV_HOME, raising=False)
    nbdir = tmp_path / "nbs"
    nbdir.mkdir()
    start = "from helpers.course import environment, paths, results\nprint(environment.use_folders(USE_DRIVE))"
    _bootstrap_notebook(nbdir / "00_make.ipynb", start,
                        "made = paths.build_dir() / 'models' / 'head.txt'",
                        "made.parent.mkdir(parents=True, exist_ok=True); made.write_text('from 00')",
                        "results.record('made.where', str(made))")
    _bootstrap_notebook(nbdir / "01_use.ipynb", start,
                        "import helpers",
                        "head = paths.build_dir() / 'models' / 'head.txt'",
                        "results.record('use.found_head', head.is_file())",
                        "results.record('use.helpers_from', helpers.__file__)",
                        "print('found 00s head' if head.is_file() else 'no head from 00: recomputed here')")
    sim = tmp_path / "sim"
    code, outcomes = runner.run(mode="quick", notebooks_dir=nbdir, colab=runner.ColabSimulation(sim, sim / "drive"))
    assert code == 0, [o.error for o in outcomes]
    got = json.loads((sim / "results" / "01_use.json").read_text())["results"]
    assert got["use.found_head"] is True  # 00's file reached 01 through the Drive, and only that way
    assert got["use.helpers_from"].startswith(str(sim / "runtimes" / "01_use" / "vggface-gender-course"))
    assert (sim / "drive" / "MyDrive" / paths.DRIVE_FOLDER / "build" / "models" / "head.txt").read_text() == "from 00"
    assert not (sim / "runtimes" / "00_make" / "vggface-gender-course" / "build").exists()
    assert json.loads((sim / "summary.json").read_text())["01_use"]["status"] == "ok"

    off = tmp_path / "off"
    code, outcomes = runner.run(mode="quick", notebooks_dir=nbdir, colab=runner.ColabSimulation(off, None))
    assert code == 0, [o.error for o in outcomes]
    assert json.loads((off / "results" / "01_use.json").read_text())["results"]["use.found_head"] is False
    assert (off / "runtimes" / "00_make" / "vggface-gender-course" / "build" / "models" / "head.txt").is_file()
    assert not (off / "drive").exists()


def test_the_simulation_refuses_a_folder_inside_a_checkout(tmp_path):
    sim = runner.ColabSimulation(paths.REPO_ROOT / "build" / "sim-inside", None)
    with pytest.raises(SystemExit, match="inside a checkout"):
        sim.prepare([])


def test_colab_options_go_together(capsys):
    with pytest.raises(SystemExit):
        runner.main(["--no-drive"])
    assert "go with --colab" in capsys.readouterr().err

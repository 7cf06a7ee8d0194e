"""Execute every notebook of the course in quick mode, through the course runner.

One test per notebook, in order, so a failure names its notebook; the runner's own message
names the cell. Per-notebook seconds are printed (pytest -s, or in the --durations table).
"""
import os

import pytest

from helpers.course import runner, paths, results

pytestmark = pytest.mark.notebooks

NOTEBOOKS = runner.discover_notebooks()


@pytest.fixture(scope="module")
def quick_course(tmp_path_factory):
    """Quick mode with results in a temporary file; the synthetic world is built once."""
    out = tmp_path_factory.mktemp("executed")
    saved = {k: os.environ.get(k) for k in (paths.ENV_MODE, results.ENV_RESULTS)}
    os.environ[paths.ENV_MODE] = "quick"
    os.environ[results.ENV_RESULTS] = str(out / "results.json")
    from helpers import synthetic

    synthetic.ensure_built()
    yield out
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def test_the_course_has_its_notebooks_in_order():
    assert [p.name[:2] for p in NOTEBOOKS] == ["00", "01", "02", "03", "04", "05", "06", "07"]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_quick_mode(notebook, quick_course):
    outcome = runner.execute_notebook(notebook, {"MODE": "quick"}, quick_course)
    print(f"\n{notebook.stem}: {outcome.status} in {outcome.seconds:.1f} s")
    assert outcome.status == "ok", outcome.error
    assert results.load(quick_course / "results.json")["results"], "the notebook recorded no result"

"""``python -m helpers.course``: run the whole course headless, in order, and report.

Each notebook in ``notebooks/`` is executed in a fresh kernel with its parameters injected
after the cell tagged ``parameters`` (the papermill convention), the executed copy is written
to ``build/notebooks/``, and a table of notebook, status and seconds closes the run. A cell
that fails makes the run exit non-zero with the notebook's name, the cell's number and the
error; ``--keep-going`` runs the remaining notebooks anyway.

    python -m helpers.course                 # every notebook, mode chosen automatically
    python -m helpers.course --mode quick    # force quick mode
    python -m helpers.course --only 03 05    # a subset
    python -m helpers.course --list          # the plan, nothing run
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import paths

# The repository's public home. Colab badges and the Colab set-up cell derive from it:
# change it here, then run `python -m helpers.course --sync-links`.
GITHUB_REPO = "vggface-gender-course/vggface-gender-course"
GITHUB_BRANCH = "main"
COLAB_CLONE_DIR = "/content/vggface-gender-course"

NOTEBOOK_PATTERN = re.compile(r"^(\d\d)_[\w-]+\.ipynb$")


def colab_url(notebook_name: str) -> str:
    return f"https://colab.research.google.com/github/{GITHUB_REPO}/blob/{GITHUB_BRANCH}/notebooks/{notebook_name}"


def colab_badge(notebook_name: str) -> str:
    return (
        f'<a href="{colab_url(notebook_name)}" target="_parent">'
        '<img src="https://colab.research.google.com/assets/colab-badge.svg" alt="Open In Colab"/></a>'
    )


def clone_url() -> str:
    return f"https://github.com/{GITHUB_REPO}"


@dataclass
class NotebookResult:
    name: str
    status: str = "pending"  # ok, failed, skipped
    seconds: float = 0.0
    error: str = ""
    failed_cell: int | None = None  # 1-based position in the notebook as committed
    output: Path | None = None


@dataclass
class Plan:
    mode: str
    reason: str
    notebooks: list[Path] = field(default_factory=list)


def discover_notebooks(folder: Path | None = None) -> list[Path]:
    folder = folder or paths.notebooks_dir()
    return sorted(p for p in folder.glob("*.ipynb") if NOTEBOOK_PATTERN.match(p.name))


def select(notebooks: list[Path], only: list[str] | None) -> list[Path]:
    """Keep the notebooks whose number or name matches ``only`` ('03', '3', '03_embeddings')."""
    if not only:
        return notebooks
    wanted = [w.strip() for item in only for w in item.split(",") if w.strip()]
    chosen = []
    for w in wanted:
        hits = [p for p in notebooks if p.name.startswith(w.zfill(2) if w.isdigit() else w)]
        if not hits:
            names = ", ".join(p.stem for p in notebooks)
            raise SystemExit(f"--only {w!r} matches no notebook (have: {names})")
        chosen.extend(h for h in hits if h not in chosen)
    return sorted(chosen)


def notebook_title(path: Path) -> str:
    nb = json.loads(path.read_text(encoding="utf-8"))
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "markdown":
            for line in "".join(cell.get("source", "")).splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return path.stem


def inject_parameters(nb, parameters: dict) -> int:
    """Insert a cell tagged ``injected-parameters`` after the ``parameters`` cell.

    Returns the index of the injected cell. A notebook without a ``parameters`` cell gets the
    injected cell first, as papermill does.
    """
    import nbformat

    lines = ["# Parameters injected by python -m helpers.course"]
    lines += [f"{k} = {v!r}" for k, v in parameters.items()]
    cell = nbformat.v4.new_code_cell("\n".join(lines))
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells = [c for c in nb.cells if "injected-parameters" not in c.get("metadata", {}).get("tags", [])]
    index = next(
        (i + 1 for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])),
        0,
    )
    nb.cells.insert(index, cell)
    return index


def execute_notebook(
    path: Path,
    parameters: dict,
    output_dir: Path,
    cell_timeout: int = 1800,
    kernel_name: str = "python3",
    on_cell=None,
) -> NotebookResult:
    """Run one notebook in a fresh kernel (cwd = its folder); write the executed copy."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    from .fileio import atomic_path

    result = NotebookResult(path.stem)
    nb = nbformat.read(path, as_version=4)
    injected_at = inject_parameters(nb, parameters)
    code_cells = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    current = {"index": None}

    def on_cell_start(cell, cell_index, **_):
        current["index"] = cell_index
        if on_cell:
            on_cell(code_cells.index(cell_index) + 1 if cell_index in code_cells else 0, len(code_cells))

    client = NotebookClient(
        nb,
        timeout=cell_timeout,
        kernel_name=kernel_name,
        resources={"metadata": {"path": str(path.parent)}},
        on_cell_start=on_cell_start,
    )
    start = time.perf_counter()
    try:
        client.execute()
        result.status = "ok"
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as exc:
        result.status = "failed"
        index = current["index"]
        source = nb.cells[index].source if index is not None else ""
        # number cells as the learner sees them: 1-based, in the notebook without the injected cell
        if index is not None:
            result.failed_cell = index + (0 if index < injected_at else -1) + 1 if index != injected_at else 0
        first = next((ln for ln in source.splitlines() if ln.strip()), "")
        summary = _error_summary(exc)
        where = "the injected parameters" if index == injected_at else f"cell {result.failed_cell}"
        result.error = f"{path.name}, {where} ({first[:60]!r}): {summary}"
    finally:
        result.seconds = time.perf_counter() - start
        output_dir.mkdir(parents=True, exist_ok=True)
        result.output = output_dir / path.name
        with atomic_path(result.output) as tmp:
            nbformat.write(nb, tmp)
    return result


def _error_summary(exc: Exception) -> str:
    ename = getattr(exc, "ename", None)
    evalue = getattr(exc, "evalue", None)
    if ename:
        return f"{ename}: {evalue}"
    text = str(exc).strip().splitlines()
    return text[-1] if text else exc.__class__.__name__


def prepare_synthetic_world() -> None:
    """Quick mode's assets: the synthetic world (built once) and how strong its story is."""
    from .. import synthetic

    synthetic.ensure_built()
    synthetic.story_numbers(record=True)


def make_plan(mode: str | None, only: list[str] | None, notebooks_dir: Path | None = None) -> Plan:
    resolved, reason = paths.resolve_mode(mode)
    return Plan(resolved, reason, select(discover_notebooks(notebooks_dir), only))


def print_plan(plan: Plan) -> None:
    print(f"Mode: {plan.reason}")
    for p in plan.notebooks:
        print(f"  {p.name:<32} {notebook_title(p)}")


def format_summary(results: list[NotebookResult]) -> str:
    width = max([len(r.name) for r in results] + [8])
    lines = [f"{'notebook':<{width}}  {'status':<8} {'seconds':>8}", "-" * (width + 19)]
    for r in results:
        lines.append(f"{r.name:<{width}}  {r.status:<8} {r.seconds:>8.1f}")
    total = sum(r.seconds for r in results)
    lines.append(f"{'total':<{width}}  {'':<8} {total:>8.1f}")
    return "\n".join(lines)


def run(
    mode: str | None = None,
    only: list[str] | None = None,
    keep_going: bool = False,
    output_dir: Path | None = None,
    extra_parameters: dict | None = None,
    cell_timeout: int = 1800,
    notebooks_dir: Path | None = None,
    prepare_quick=None,
) -> tuple[int, list[NotebookResult]]:
    """Run the plan; returns (exit code, one NotebookResult per planned notebook).

    ``prepare_quick`` builds quick mode's assets before the first notebook (default: the
    synthetic world and the miniature VGG-Face, cached after the first run).
    """
    from . import results as results_mod

    plan = make_plan(mode, only, notebooks_dir)
    print(f"Mode: {plan.reason}")
    if plan.mode == "full":
        missing = paths.missing_full_assets()
        if missing:
            print("Full mode needs these assets, which are missing:", file=sys.stderr)
            for what, where, how in missing:
                print(f"  - {what}: {where}\n      how to get it: {how}", file=sys.stderr)
            return 2, []
    output_dir = output_dir or paths.build_dir() / "notebooks"
    os.environ[paths.ENV_MODE] = plan.mode  # kernels inherit it; helpers agree on the mode
    extra = extra_parameters or {}
    os.environ[paths.ENV_SMOKE] = "1" if extra.get("SMOKE") else "0"
    os.environ[paths.ENV_SUBSET] = repr(float(extra.get("SUBSET", 1.0)))
    if not only:
        results_mod.reset(plan.mode)
    if plan.mode == "quick":
        if prepare_quick is None:
            prepare_quick = prepare_synthetic_world
        t0 = time.perf_counter()
        prepare_quick()
        print(f"Synthetic world ready ({time.perf_counter() - t0:.0f} s)")

    parameters = {"MODE": plan.mode, **(extra_parameters or {})}
    outcomes: list[NotebookResult] = []
    n = len(plan.notebooks)
    for i, path in enumerate(plan.notebooks, 1):
        label = f"[{i}/{n}] {path.stem}"

        def on_cell(k, total, label=label):
            if sys.stdout.isatty():
                print(f"\r{label}: cell {k}/{total}", end="", flush=True)

        print(f"{label} ...", flush=True)
        outcome = execute_notebook(path, parameters, output_dir, cell_timeout=cell_timeout, on_cell=on_cell)
        if sys.stdout.isatty():
            print("\r", end="")
        print(f"{label}: {outcome.status} in {outcome.seconds:.1f} s -> {outcome.output}", flush=True)
        outcomes.append(outcome)
        results_mod.record(f"runner.{path.stem}.seconds", round(outcome.seconds, 1), mode=plan.mode)
        if outcome.status == "failed":
            print(f"FAILED: {outcome.error}", file=sys.stderr, flush=True)
            if not keep_going:
                break
    for path in plan.notebooks[len(outcomes):]:
        outcomes.append(NotebookResult(path.stem, status="skipped"))
    print()
    print(format_summary(outcomes))
    print(f"Results: {results_mod.results_path()}")
    failed = [o for o in outcomes if o.status == "failed"]
    for o in failed:
        print(f"FAILED: {o.error}", file=sys.stderr)
    return (1 if failed else 0), outcomes


def sync_links(readme: Path | None = None, notebooks: list[Path] | None = None) -> list[Path]:
    """Rewrite every Colab badge and clone URL from ``GITHUB_REPO``; return the files changed."""
    import nbformat

    badge_re = re.compile(r'<a href="https://colab\.research\.google\.com/github/[^"]*/notebooks/([\w-]+\.ipynb)"[^>]*>.*?</a>')
    clone_re = re.compile(r"https://github\.com/[\w.-]+/[\w.-]+(?=\s|$|\")")
    changed = []
    readme = readme or paths.REPO_ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    new = badge_re.sub(lambda m: colab_badge(m.group(1)), text)
    if new != text:
        readme.write_text(new, encoding="utf-8")
        changed.append(readme)
    for path in notebooks or discover_notebooks():
        nb = nbformat.read(path, as_version=4)
        dirty = False
        for cell in nb.cells:
            src = badge_re.sub(lambda m: colab_badge(m.group(1)), cell.source)
            if cell.cell_type == "code" and "git clone" in src:
                src = clone_re.sub(clone_url(), src)
            if src != cell.source:
                cell.source, dirty = src, True
        if dirty:
            nbformat.write(nb, path)
            changed.append(path)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.course", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["quick", "full", "auto"], default=None,
                        help="quick (synthetic world), full (real VGG-Face + Adience) or auto (default: full if the real assets are present)")
    parser.add_argument("--only", nargs="+", metavar="NN", help="run only these notebooks, e.g. --only 03 05 or --only 03,05")
    parser.add_argument("--list", action="store_true", help="show the plan and exit")
    parser.add_argument("--keep-going", action="store_true", help="run the remaining notebooks after a failure")
    parser.add_argument("--output-dir", type=Path, help="where executed notebooks go (default build/notebooks)")
    parser.add_argument("--smoke", action="store_true",
                        help="every size and epoch count at its minimum (SMOKE = True in every notebook): "
                             "checks in minutes that this machine and its assets work end to end")
    parser.add_argument("--subset", type=float, default=None, metavar="F",
                        help="full mode on a share F of Adience's users (whole users, every fold kept): SUBSET = F")
    parser.add_argument("--cell-timeout", type=int, default=1800, help="seconds one cell may run")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("NAME", "VALUE"), default=[],
                        help="extra parameter for every notebook (VALUE is read as JSON when it parses, else as a string)")
    parser.add_argument("--sync-links", action="store_true", help="rewrite Colab badges and clone URLs from GITHUB_REPO")
    args = parser.parse_args(argv)
    if args.sync_links:
        for p in sync_links():
            print(f"updated {p}")
        return 0
    if args.list:
        print_plan(make_plan(args.mode, args.only))
        return 0
    extra = {}
    for name, value in args.parameter:
        try:
            extra[name] = json.loads(value)
        except json.JSONDecodeError:
            extra[name] = value
    if args.smoke:
        extra["SMOKE"] = True
    if args.subset is not None:
        if not 0 < args.subset <= 1:
            parser.error(f"--subset {args.subset}: a share of the users in (0, 1]")
        extra["SUBSET"] = args.subset
    code, _ = run(args.mode, args.only, args.keep_going, args.output_dir, extra, args.cell_timeout)
    return code


if __name__ == "__main__":
    raise SystemExit(main())

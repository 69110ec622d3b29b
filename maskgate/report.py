"""A Markdown report of what changed between two revisions: params, metrics and the gate's curves.

For pull requests: `maskgate report --base main` compares the workspace (or a commit, branch, tag or
DVC experiment) with a base revision and writes, into one folder,

* ``report.md``: ``dvc params diff --md`` and ``dvc metrics diff --md`` (changed values only), then
  the plots as images linked by relative path, so the folder renders wherever it is uploaded (the
  pull-request workflow posts it with ``cml comment update``, which uploads the linked PNGs);
* ``precision_recall.png`` and ``threshold_sweep.png``: the base and new curves overlaid, drawn from
  the plot data the evaluate stage writes (``reports/plots/*.csv``) as read at each revision;
* ``comment.md`` (only with ``artifact_url``): the same text for where the images cannot be
  uploaded (a comment posted without CML), with a link to the uploaded folder in place of them.

Everything is read from git and the workspace: metrics and plot data are git-tracked
(``cache: false`` in dvc.yaml), so no DVC remote and no network are needed. The same revisions give
byte-identical files.
"""
from __future__ import annotations

import csv
import io
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure

from maskgate.evaluation.metrics import PLOT_CSV, PLOT_PNG, save_png
from maskgate.utils.tables import atomic_dir

WORKSPACE = "workspace"  # the working tree as it is, uncommitted changes included (DVC's word)
PLOTS_DIR = "reports/plots"  # the evaluate stage's plots output (dvc.yaml)
BASE_STYLE, NEW_STYLE = "--", "-"  # line styles of the base's and the new revision's curves
COMMENT_MARKER = "<!-- maskgate-report -->"  # first line of comment.md: lets a poster find its own comment


class ReportError(Exception):
    """A report cannot be made (unknown revision, not a DVC repository, DVC failed); the message says why."""


@dataclass(frozen=True)
class Revision:
    """A revision as the user named it, and the commit it resolved to (None for the workspace)."""

    name: str
    sha: str | None

    def __str__(self) -> str:
        return f"`{self.name}`" if self.sha is None else f"`{self.name}` ({self.sha[:7]})"


@dataclass(frozen=True)
class PlotSpec:
    """One overlaid plot: which plot-data file, its x column, the y columns drawn against it."""

    name: str  # key of metrics.PLOT_CSV / PLOT_PNG
    title: str
    x: str
    ys: tuple[str, ...]
    xlabel: str


PLOTS = (
    PlotSpec("precision_recall", "Precision-recall", "recall", ("precision",), "recall"),
    PlotSpec("threshold_sweep", "Threshold sweep", "threshold", ("precision", "recall", "auto_pass_rate"),
             "threshold on P(accept)"),
)


def resolve(root: Path, rev: str) -> Revision:
    """The commit `rev` names (a sha, branch, tag, ``HEAD~1`` or a DVC experiment name), or the workspace."""
    if rev == WORKSPACE:
        return Revision(rev, None)
    from dvc.scm import SCM, RevError, SCMError, resolve_rev

    try:
        scm = SCM(str(root))
    except SCMError as exc:
        raise ReportError(f"{root} is not a git repository ({exc})") from None
    try:
        return Revision(rev, resolve_rev(scm, rev))
    except RevError:
        raise ReportError(f"unknown revision '{rev}': not a commit, branch, tag or DVC experiment "
                          f"(in CI, was the base branch fetched? actions/checkout needs fetch-depth: 0)") from None


def dvc_diff(root: Path, what: str, base: Revision, new: Revision) -> tuple[str | None, list[str]]:
    """``dvc {what} diff --md`` (what: params | metrics) of base against new.

    Returns the Markdown table, or None when nothing changed, and what DVC said on stderr (for
    instance that a revision has no metrics file), so the report can show it.
    """
    cmd = [sys.executable, "-m", "dvc", what, "diff", "--md", base.name]
    if new.sha is not None:
        cmd.append(new.name)
    p = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    said = [line.strip() for line in p.stderr.splitlines() if line.strip()]
    if p.returncode != 0:
        raise ReportError(f"`dvc {what} diff` failed: " + (" ".join(said) or f"exit status {p.returncode}"))
    table = p.stdout.strip()
    # The header and the |---| line only: DVC found no change.
    return (table if len(table.splitlines()) > 2 else None), said


def read_text_at(root: Path, rev: Revision, path: str) -> str | None:
    """The text of `path` at `rev` (from git, or the working tree), or None when it is not there."""
    if rev.sha is None:
        f = root / path
        return f.read_text(encoding="utf-8") if f.is_file() else None
    p = subprocess.run(["git", "show", f"{rev.sha}:{path}"], cwd=root, capture_output=True)
    return p.stdout.decode("utf-8") if p.returncode == 0 else None


def parse_plot_csv(text: str, spec: PlotSpec, where: str) -> dict[str, list[float]]:
    """Columns of a plot-data CSV as floats ("nan" for undefined points, as metrics writes them)."""
    rows = list(csv.DictReader(io.StringIO(text)))
    missing = [c for c in (spec.x, *spec.ys) if rows and c not in rows[0]]
    if not rows or missing:
        raise ReportError(f"{where}: " + (f"no column {', '.join(missing)}" if missing else "no data rows"))
    try:
        return {c: [float(r[c]) for r in rows] for c in (spec.x, *spec.ys)}
    except (TypeError, ValueError) as exc:
        raise ReportError(f"{where}: a value is not a number ({exc})") from None


def draw_overlay(spec: PlotSpec, curves: list[tuple[str, str, dict[str, list[float]]]]) -> Figure:
    """The curves of each revision, given as (legend label, line style, columns), on one axes: one
    colour per y column, the revisions told apart by line style."""
    fig = Figure(figsize=(5.5, 5), layout="constrained")
    ax = fig.subplots()
    for label, style, data in curves:
        for i, y in enumerate(spec.ys):
            name = label if len(spec.ys) == 1 else f"{y}, {label}"
            ax.plot(data[spec.x], data[y], style, color=f"C{i}", label=name)
    ax.set(xlabel=spec.xlabel, ylabel=" / ".join(spec.ys), xlim=(0, 1), ylim=(0, 1.02), title=spec.title)
    ax.grid(alpha=0.3)
    # Below the axes, so no curve hides behind it.
    fig.legend(loc="outside lower center", ncols=2 if len(spec.ys) == 1 else len(curves), fontsize="small")
    return fig


def plots_at(root: Path, base: Revision, new: Revision, out: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """Draw every plot of PLOTS into `out` from the data at base and new.

    A plot-data file missing at one revision is noted and the plot drawn from the other; missing at
    both, the plot is left out and noted. Returns ([(title, png name)], notes).
    """
    images, notes = [], []
    for spec in PLOTS:
        path = f"{PLOTS_DIR}/{PLOT_CSV[spec.name]}"
        curves, missing = [], []
        for role, rev, style in (("base", base, BASE_STYLE), ("new", new, NEW_STYLE)):
            text = read_text_at(root, rev, path)
            if text is None:
                missing.append(f"{role} {rev}")
            else:
                curves.append((f"{rev.name} ({role})", style, parse_plot_csv(text, spec, f"{path} at {rev.name}")))
        if not curves:
            notes.append(f"{spec.title}: `{path}` is missing at both revisions; not drawn.")
            continue
        if missing:
            notes.append(f"{spec.title}: `{path}` is missing at {missing[0]}; drawn from {curves[0][0]} alone.")
        png = PLOT_PNG[spec.name]
        save_png(draw_overlay(spec, curves), out / png)
        images.append((spec.title, png))
    return images, notes


def markdown(base: Revision, new: Revision, params: tuple, metrics: tuple, plots_md: list[str]) -> str:
    """The report's Markdown: title, params and metrics sections, then the given plots section lines."""
    lines = [f"# maskgate report: {new} against {base}", ""]
    for heading, (table, said), nothing in (("Params", params, "No params changed."),
                                            ("Metrics", metrics, "No metrics changed.")):
        lines += [f"## {heading}", "", table or nothing, ""]
        lines += [f"> dvc: {s}" for s in said] + ([""] if said else [])
    lines += ["## Plots", "", *plots_md]
    return "\n".join(lines).rstrip("\n") + "\n"


def write_report(root: Path, base: str, rev: str, out: Path, artifact_url: str | None = None) -> Path:
    """Write report.md and the plot PNGs (and comment.md with `artifact_url`) into `out`; returns report.md.

    `out` is replaced as a whole, and only once everything is written.
    """
    root = Path(root)
    if not (root / ".dvc").is_dir():
        raise ReportError(f"{root} is not a DVC repository (no .dvc/): run the report in the repository root")
    if base == WORKSPACE:
        raise ReportError("--base must name a git revision, not the workspace")
    base_rev, new_rev = resolve(root, base), resolve(root, rev)
    params = dvc_diff(root, "params", base_rev, new_rev)
    metrics = dvc_diff(root, "metrics", base_rev, new_rev)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out) as tmp:
        images, notes = plots_at(root, base_rev, new_rev, tmp)
        legend = [f"Dashed: base {base_rev}; solid: {new_rev}.", ""] if images else []
        notes_md = [f"- {n}" for n in notes] + ([""] if notes else [])
        embedded = legend + [f"![{title}]({png})" + "\n" for title, png in images] + notes_md
        (tmp / "report.md").write_text(markdown(base_rev, new_rev, params, metrics, embedded), encoding="utf-8")
        if artifact_url:
            names = "; ".join(title for title, _ in images) or "none drawn"
            linked = [f"Plots ({names}): in the report folder uploaded with [this run]({artifact_url}).", ""]
            (tmp / "comment.md").write_text(
                COMMENT_MARKER + "\n" + markdown(base_rev, new_rev, params, metrics, linked + notes_md),
                encoding="utf-8")
    return out / "report.md"

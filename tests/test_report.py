"""`maskgate report`: params and metrics diffs and overlaid curves between two revisions, offline."""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from maskgate import cli
from maskgate.evaluation import metrics
from maskgate.report import COMMENT_MARKER, ReportError, write_report
from maskgate.utils.tables import write_json
from tests.conftest import ROOT
from tests.project import committed_params
from tests.test_pipeline_dvc import sh

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]


def report(repo: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m maskgate report ...` in `repo`, with this checkout's maskgate package."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    return subprocess.run([sys.executable, "-m", "maskgate", "report", *args], cwd=repo, env=env,
                          capture_output=True, text=True)


def table_rows(md: str, heading: str) -> dict[str, list[str]]:
    """The rows of the Markdown table under `## heading`: {second cell: the cells after it}."""
    section = md.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) > 2 and not set(cells[0]) <= {"-"} and cells[0] != "Path":
            rows[cells[1]] = cells[2:]
    return rows


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested metrics as DVC names them: {"by_kind.hard.auroc": value, ...}."""
    out = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def write_evaluation(repo: Path, seed: int, noise: float) -> dict:
    """metrics.json and the plot files of the evaluate stage, from scores drawn at random."""
    rng = np.random.default_rng(seed)
    labels = np.array([1] * 30 + [0] * 90)
    kinds = ["positive"] * 30 + ["hard"] * 45 + ["easy"] * 45
    p = np.clip(labels * 0.6 + 0.2 + rng.normal(0, noise, len(labels)), 0, 1)
    m = metrics.compute_metrics(labels, p, kinds, [0.5, 0.9], 0.95)
    write_json(m, repo / "reports/metrics.json")
    metrics.write_plots(labels, p, repo / "reports/plots", names=("ACCEPT", "REJECT"))
    return m


def set_param(repo: Path, dotted: str, value):
    p = yaml.safe_load((repo / "params.yaml").read_text())
    *path, last = dotted.split(".")
    node = p
    for k in path:
        node = node[k]
    node[last] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))


def pipeline_only(tmp: Path) -> Path:
    """A git repo with the project's pipeline and params (what the diffs read), no code or data."""
    repo = tmp / "repo"
    for f in ("dvc.yaml", ".dvcignore", ".dvc/config", ".dvc/.gitignore"):
        (repo / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, repo / f)
    (repo / "params.yaml").write_text(committed_params())  # a clone's, not what scripts/demo.sh left in the working copy
    sh("git", "init", "-q", cwd=repo)
    sh(*GIT, "add", "-A", cwd=repo)
    sh(*GIT, "commit", "-qm", "copy", cwd=repo)
    return repo


@pytest.fixture
def two_commits(tmp_path):
    """The pipeline in a fresh git repo: commit `copy` (no evaluation), branch `base` (one), and a
    workspace with two params and the evaluation changed."""
    repo = pipeline_only(tmp_path)
    base_metrics = write_evaluation(repo, seed=1, noise=0.3)
    sh(*GIT, "add", "reports", cwd=repo)
    sh(*GIT, "commit", "-qm", "base evaluation", cwd=repo)
    sh("git", "branch", "base", cwd=repo)
    set_param(repo, "lr", 0.0003)
    set_param(repo, "train.lora.r", 8)
    new_metrics = write_evaluation(repo, seed=2, noise=0.1)
    return repo, flatten(base_metrics), flatten(new_metrics)


def test_report_lists_exactly_the_changed_params_and_metrics(two_commits):
    repo, old, new = two_commits
    write_report(repo, "base", "workspace", repo / "out", artifact_url="https://ci.example/run/1")
    md = (repo / "out/report.md").read_text()
    params = table_rows(md, "Params")
    assert set(params) == {"lr", "train.lora.r"}
    assert params["lr"] == ["0.0001", "0.0003"] and params["train.lora.r"] == ["16", "8"]
    changed = {k for k in new if old[k] != new[k]}
    assert {"auroc", "by_kind.hard.auroc", "ece"} <= changed and set(table_rows(md, "Metrics")) == changed
    assert "missing" not in md  # both revisions have every plot-data file
    for png in ("precision_recall.png", "threshold_sweep.png"):
        assert f"]({png})" in md and (repo / "out" / png).read_bytes().startswith(b"\x89PNG")
    # CML uploads an image found at the link resolved from report.md's folder and silently leaves
    # any other link as it is: every link is relative and names a PNG of the folder, and every PNG is linked.
    links = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", md)
    assert all(not re.match(r"[a-z]+:|/", link) and ".." not in link for link in links), links
    assert sorted(os.path.normpath(link) for link in links) == sorted(f.name for f in (repo / "out").glob("*.png"))
    assert all((repo / "out" / link).is_file() for link in links)
    comment = (repo / "out/comment.md").read_text()
    assert comment.startswith(COMMENT_MARKER) and "](https://ci.example/run/1)" in comment and ".png)" not in comment
    assert table_rows(comment, "Metrics") == table_rows(md, "Metrics")
    # Byte-stable: the same revisions give the same files.
    first = {f.name: f.read_bytes() for f in (repo / "out").iterdir()}
    write_report(repo, "base", "workspace", repo / "out", artifact_url="https://ci.example/run/1")
    assert {f.name: f.read_bytes() for f in (repo / "out").iterdir()} == first


def test_report_between_commits_and_with_missing_plot_data(two_commits):
    repo, _, _ = two_commits
    sh(*GIT, "commit", "-qam", "new evaluation", cwd=repo)
    write_report(repo, "base", "HEAD", repo / "out")
    assert set(table_rows((repo / "out/report.md").read_text(), "Params")) == {"lr", "train.lora.r"}
    # `HEAD~2` is the bare copy: no metrics, no plot data. The report says so and draws the new curves.
    write_report(repo, "HEAD~2", "workspace", repo / "out")
    md = (repo / "out/report.md").read_text()
    assert "`reports/plots/precision_recall.csv` is missing at base `HEAD~2`" in md
    assert "`reports/plots/threshold_sweep.csv` is missing at base `HEAD~2`" in md
    assert (repo / "out/threshold_sweep.png").is_file()
    assert table_rows(md, "Metrics")["auroc"][0] == "-"  # no value at the base


def test_report_unknown_revision_is_a_clear_error(tmp_path):
    repo = pipeline_only(tmp_path)
    p = report(repo, "--base", "no-such-branch", "--out", "out")
    assert p.returncode == 1 and "unknown revision 'no-such-branch'" in p.stderr and "Traceback" not in p.stderr
    assert not (repo / "out").exists()
    with pytest.raises(ReportError, match="unknown revision 'no-such-exp'"):
        write_report(repo, "HEAD", "no-such-exp", repo / "out")
    with pytest.raises(ReportError, match="not the workspace"):
        write_report(repo, "workspace", "HEAD", repo / "out")


WORKFLOW = ROOT / ".github/workflows/pr-report.yml"
CML_VALUE_OPTIONS = {"--target", "--watermark-title", "--publish-url", "--trigger-file", "--driver", "--repo",
                     "--token", "--log", "--commit-sha", "--head-sha"}  # the `cml comment` options that take a value


def commands(run: str) -> list[list[str]]:
    """The commands of a step's `run:` script, split as the shell splits them: continuation lines
    joined, each ${{ expression }} replaced by one word (EXPR_github_base_ref for ${{ github.base_ref }})."""
    text = re.sub(r"\$\{\{\s*(.*?)\s*\}\}", lambda m: "EXPR_" + re.sub(r"\W+", "_", m.group(1)), run)
    words = (shlex.split(line, comments=True) for line in text.replace("\\\n", " ").splitlines())
    return [w for w in words if w]


def step_running(steps: list[dict], *prefix: str) -> tuple[int, dict, list[str]]:
    """(index, step, command) of the one step whose script runs a command starting with `prefix`."""
    found = [(i, s, c) for i, s in enumerate(steps) for c in commands(s.get("run", "")) if c[:len(prefix)] == list(prefix)]
    assert len(found) == 1, f"{len(found)} steps run `{' '.join(prefix)}`"
    return found[0]


def cml_file_argument(cmd: list[str]) -> tuple[str, dict[str, str]]:
    """The markdown file that `cml comment create|update [options] FILE` posts, and its options."""
    options, files, words = {}, [], iter(cmd[3:])
    for w in words:
        if w.startswith("--"):
            name, eq, value = w.partition("=")
            options[name] = value if eq else (next(words, "") if name in CML_VALUE_OPTIONS else "true")
        else:
            files.append(w)
    assert len(files) == 1, f"`{shlex.join(cmd)}` posts {files}, not one file"
    return files[0], options


def test_pr_workflow_writes_the_report_and_posts_that_file_with_cml(monkeypatch):
    text = WORKFLOW.read_text()
    wf = yaml.safe_load(text)
    assert list(wf[True]) == ["pull_request"]  # YAML 1.1 reads the key `on` as True
    assert wf["permissions"] == {"contents": "read", "pull-requests": "write"}
    assert set(re.findall(r"secrets\.(\w+)", text)) == {"GITHUB_TOKEN"}  # no secret to set up
    steps = [s for job in wf["jobs"].values() for s in job["steps"]]
    assert any(s.get("uses", "").startswith("actions/checkout@") and s.get("with", {}).get("fetch-depth") == 0
               for s in steps)

    # The report step: a `maskgate report` command line that the CLI's own parser accepts.
    i_report, step, cmd = step_running(steps, "maskgate", "report")
    assert any(c[:2] == [".", ".venv/bin/activate"] for c in commands(step["run"]))  # where `maskgate` comes from
    seen = []
    monkeypatch.setattr(cli, "cmd_report", lambda args: seen.append(args) or 0)
    try:
        assert cli.main(cmd[1:]) == 0
    except SystemExit as exc:  # argparse's answer to an unknown option or a missing value
        pytest.fail(f"`maskgate report` rejects the workflow's command line `{shlex.join(cmd)}` (exit {exc.code})")
    (args,) = seen
    assert args.base == "origin/EXPR_github_base_ref" and args.rev == "workspace"
    written = Path(os.path.normpath(args.out / "report.md"))

    # The CML step posts that very file (its link paths resolved from the file's folder), once
    # CML is set up, and later pushes update the same comment, found by its watermark.
    i_cml, step, cmd = step_running(steps, "cml", "comment")
    assert cmd[2] == "update" or (cmd[2] == "create" and "--update" in cmd), shlex.join(cmd)
    posted, options = cml_file_argument(cmd)
    assert Path(os.path.normpath(Path(step.get("working-directory", ".")) / posted)) == written
    assert options.get("--watermark-title"), "without a watermark title `update` takes any CML comment"
    assert options.get("--publish", "true") == "true" and "--no-publish" not in options  # the PNGs are uploaded
    assert step["env"] == {"REPO_TOKEN": "${{ secrets.GITHUB_TOKEN }}"}
    setup = [i for i, s in enumerate(steps) if s.get("uses", "").split("@")[0] == "iterative/setup-cml"]
    assert [steps[i]["uses"] for i in setup] == ["iterative/setup-cml@v2"] and i_report < i_cml and setup[0] < i_cml
    # A fork's pull request (read-only token) skips CML and keeps the uploaded folder.
    same_repo = "github.event.pull_request.head.repo.full_name == github.repository"
    assert step.get("if") == same_repo and steps[setup[0]].get("if") == same_repo
    uploads = [s for s in steps if s.get("uses", "").startswith("actions/upload-artifact@")]
    assert len(uploads) == 1 and "if" not in uploads[0]
    assert Path(uploads[0]["with"]["path"]) == written.parent


@pytest.mark.slow
def test_report_of_two_demo_experiments(two_demo_experiments):
    """The report of one tiny demo experiment against another (conftest runs them, shared with
    test_experiments): exactly the params and metrics that differ between them."""
    repo, _ = two_demo_experiments
    shown = json.loads(sh("dvc", "exp", "show", "--json", cwd=repo))
    exps = {e["name"]: e["revs"][0]["data"] for commit in shown for e in (commit.get("experiments") or []) if e.get("name")}
    # both metrics files: evaluate's headline (reports/metrics.json) and train's (reports/train.json)
    old, new = ({k: v for f in ("reports/metrics.json", "reports/train.json")
                 for k, v in flatten(exps[n]["metrics"][f]["data"]).items()} for n in ("first", "second"))
    assert {"auroc", "hard_auroc", "train_loss", "eval_auroc"} <= set(old)
    changed = {k for k in old.keys() | new.keys() if old.get(k) != new.get(k)}
    assert "auroc" in changed  # a different lr trains a different verifier

    p = report(repo, "--base", "first", "--rev", "second", "--out", "out")
    assert p.returncode == 0, p.stderr
    md = (repo / "out/report.md").read_text()
    assert table_rows(md, "Params") == {"lr": ["0.001", "0.0001"]}
    assert set(table_rows(md, "Metrics")) == changed
    assert "missing" not in md
    assert {"precision_recall.png", "threshold_sweep.png"} <= {f.name for f in (repo / "out").iterdir()}

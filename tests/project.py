"""The project copied into a fresh git repository, as a clone would have it (the DVC tests and the rehearsal)."""
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GENERATED = ("data/prepared", "data/negatives", "data/rendered", "data/scores")  # stage outputs, never copied
GIT = ["git", "-c", "user.name=maskgate tests", "-c", "user.email=tests@maskgate.invalid"]


def committed_params() -> str:
    """params.yaml as the last commit has it: what a clone gets (scripts/demo.sh leaves its own settings in
    the working copy, as `dvc exp run` does), or the file itself outside git."""
    shown = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=ROOT, capture_output=True, text=True)
    return shown.stdout if shown.returncode == 0 else (ROOT / "params.yaml").read_text()


def project_copy(repo: Path, params_text: str | None = None) -> Path:
    """The project's tracked and new files (no data, no venv) in a fresh git repository with one commit;
    params.yaml replaced by `params_text` when given."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file() and not f.startswith(GENERATED):
            (repo / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, repo / f)
    if params_text is not None:
        (repo / "params.yaml").write_text(params_text)
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "a fresh clone"]):
        subprocess.run(GIT + cmd, cwd=repo, check=True, capture_output=True)
    return repo

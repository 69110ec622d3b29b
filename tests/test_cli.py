"""Command-line habits of `maskgate verify`: stdout holds only one candidate's JSON (so `| jq` works), status
lines go to stderr, --quiet leaves stderr empty, --version, and the opt-in exit codes a shell script gates on.
The stream tests run the real command in a subprocess: progress bars and library logging write to the process's
own stderr, which only a subprocess shows as a user sees it."""
import json
import os
import subprocess
import sys
import tomllib

import pytest
import yaml

from maskgate.cli import EXIT_ACCEPT, EXIT_ERROR, EXIT_REVIEW, main
from tests.conftest import ROOT
from tests.test_gate import good, small_verifier, write_manifest  # noqa: F401  (fixture)

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
MASKGATE = [sys.executable, "-m", "maskgate"]


@pytest.fixture
def folder(tmp_path):
    """photo.jpg, mask.png and a two-line manifest; the tests run in it."""
    write_manifest(tmp_path / "in", [good(0), good(1, query="a box")])
    return tmp_path / "in"


def one(small_verifier, *more):  # noqa: F811
    return ["verify", "--image", "photo.jpg", "--query", "the box", "--mask", "mask.png", "--model", str(small_verifier),
            "--device", "cpu", *more]


def test_one_candidate_on_stdout_pipes_into_a_json_reader(folder, small_verifier):  # noqa: F811
    command = " ".join(f"'{a}'" for a in MASKGATE + one(small_verifier, "--threshold", "1"))
    reader = f"'{sys.executable}' -c 'import json, sys; r = json.load(sys.stdin); print(r[\"decision\"], r[\"route\"])'"
    p = subprocess.run(["bash", "-c", f"set -o pipefail; {command} | {reader}"], cwd=folder, env=ENV,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr  # without --exit-code a REJECT is still exit 0
    assert p.stdout == "REJECT needs_review\n"
    assert "verify: scoring settings from" in p.stderr  # status lines: on stderr, out of the pipe


def test_what_the_speed_settings_say_goes_to_stderr_too(folder, small_verifier):  # noqa: F811
    """A params file whose evaluate section merges the adapter (params.yaml's does): the line saying so is status."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["evaluate"].update(merge_adapter=True, compile=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    p = subprocess.run(MASKGATE + one(small_verifier, "--threshold", "1", "--params", "params.yaml"), cwd=folder,
                       env=ENV, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["decision"] == "REJECT" and p.stdout.count("\n") == 1
    assert "gate: LoRA adapter merged" in p.stderr and "compiling the decoder layers requested" in p.stderr


def test_quiet_leaves_stderr_empty(folder, small_verifier, tmp_path):  # noqa: F811
    p = subprocess.run(MASKGATE + one(small_verifier, "--threshold", "1", "--quiet", "--exit-code"), cwd=folder, env=ENV,
                       capture_output=True, text=True)
    assert (p.returncode, p.stderr) == (EXIT_REVIEW, "")
    assert json.loads(p.stdout)["decision"] == "REJECT" and p.stdout.count("\n") == 1

    out = tmp_path / "out"  # a manifest, quiet: no status, no progress bar, no output at all
    p = subprocess.run(MASKGATE + ["verify", "manifest.jsonl", "--model", str(small_verifier), "--threshold", "0.5",
                                   "--device", "cpu", "--out", str(out), "-q"],
                       cwd=folder, env=ENV, capture_output=True, text=True)
    assert (p.returncode, p.stdout, p.stderr) == (0, "", "")
    assert json.loads((out / "summary.json").read_text())["lines"] == 2 and (out / "review.html").is_file()


def test_exit_codes_gate_a_shell_script(folder, small_verifier, capsys, monkeypatch):  # noqa: F811
    monkeypatch.chdir(folder)
    assert main(one(small_verifier, "--threshold", "0", "--exit-code")) == EXIT_ACCEPT == 0
    assert json.loads(capsys.readouterr().out)["decision"] == "ACCEPT"
    assert main(one(small_verifier, "--threshold", "1", "--exit-code")) == EXIT_REVIEW == 1
    assert main(one(small_verifier, "--threshold", "1")) == 0  # not asked for: scored is 0
    # a candidate that cannot be read goes to review: 1, and its JSON says why
    args = one(small_verifier, "--threshold", "0", "--exit-code")
    args[args.index("photo.jpg")] = "gone.jpg"
    capsys.readouterr()
    assert main(args) == EXIT_REVIEW
    assert json.loads(capsys.readouterr().out) == {"error": "missing_image", "detail": "gone.jpg", "route": "needs_review"}
    # failing to score at all is 2 with --exit-code (1 would read as "needs review"), 1 without
    no_model = one(folder / "no-model", "--threshold", "0")
    assert main(no_model + ["--exit-code"]) == EXIT_ERROR == 2
    assert main(no_model) == 1
    # usage errors: 2
    assert main(["verify", "manifest.jsonl", "--image", "photo.jpg"]) == 2
    assert main(["verify", "--image", "photo.jpg", "--mask", "mask.png"]) == 2
    assert main(["verify", "manifest.jsonl", "--exit-code", "--threshold", "0"]) == 2
    assert "--exit-code is for one candidate" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # argparse's own usage errors are 2 as well
        main(["verify", "--threshold", "high"])
    assert e.value.code == 2
    shown = subprocess.run(MASKGATE + ["verify", "--help"], env=ENV, capture_output=True, text=True).stdout
    assert "With --exit-code (one candidate): 0 ACCEPT" in " ".join(shown.split())  # the codes are in --help


def test_version():
    want = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    p = subprocess.run(MASKGATE + ["--version"], env=ENV, capture_output=True, text=True)
    assert (p.returncode, p.stdout, p.stderr) == (0, f"maskgate {want}\n", "")


def test_other_commands_print_status_on_stderr(tmp_path, capsys):
    assert main(["demo-manifest", "--out", str(tmp_path / "demo"), "--images", "1"]) == 0
    shown = capsys.readouterr()
    assert shown.out == "" and shown.err.startswith("demo-manifest: wrote ")

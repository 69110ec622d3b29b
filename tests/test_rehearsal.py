"""The run a user makes, rehearsed: `dvc repro` with params.yaml exactly as committed, against a local hub
serving the real ids over HTTP (tests/hub), then `maskgate verify` on sample photos (scripts/rehearse.py)."""
import json
import subprocess
import sys

import pytest
import yaml

from tests.conftest import ROOT
from tests.project import committed_params

pytestmark = pytest.mark.slow


def test_dvc_repro_with_the_committed_params_through_the_hub(tmp_path):
    work = tmp_path / "rehearsal"
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "rehearse.py"), str(work)],
                       capture_output=True, text=True, timeout=1800)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-3000:]
    s = json.loads((work / "rehearsal.json").read_text())
    repo = work / "repo"
    assert (repo / "params.yaml").read_text() == committed_params()  # nothing but env changed
    committed = yaml.safe_load(committed_params())
    assert committed["data"]["source"] == "hub" and committed["model"]["preset"] == "qwen3-vl-8b"
    # one commit of the data, and one of the base, resolved from `main` and recorded
    assert s["data"]["repo"] == "Shengcao1006/MaskGroups-HQ" and len(s["data"]["commit"]) == 40
    assert s["data"]["hub_splits"] == ["train", "validation"]
    assert s["base"]["repo"] == "Qwen/Qwen3-VL-8B-Instruct" and len(s["base"]["revision"]) == 40
    # ids restart per hub split in the stand-in: namespaced, no row is lost as a duplicate
    assert sum(s["kept"].values()) == 276 and s["kept"]["test"] > 0
    assert s["test"]["n"] > 0 and s["test"]["auroc"] is not None  # the hub's validation split, scored apart
    assert s["gate"]["lines"] == s["gate"]["auto_pass"] + s["gate"]["needs_review"] > 0
    assert s["gate"]["bad_lines"] == 0
    # the libraries' own download code ran against the hub: dataset rows and zip, processor and weights
    assert s["hub_requests"].get("GET datasets resolve", 0) >= 2 and s["hub_requests"].get("GET models resolve", 0) >= 2
    assert s["hub_unhandled"] == []
    for out in ("reports/audit/index.html", "data/scores/test.parquet", "models/verifier/adapter"):
        assert (repo / out).exists(), out

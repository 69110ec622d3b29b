"""The prepare stage against a local hub (tests/hub) that is gated, pinned wrong or missing its zip: one line each."""
import os
import subprocess
import sys

import pytest
import yaml

from tests.conftest import ROOT, project_params
from tests.hub import repos
from tests.hub.server import serve


@pytest.fixture(scope="module")
def hub_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    repos.build_maskgroups(root)
    return root


def prepare(tmp_path, url, **data):
    tmp_path.mkdir(parents=True, exist_ok=True)
    params = project_params()
    params["data"].update({"source": "hub", **data})  # whatever the working copy holds (the demo: demo)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=url, HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_XET="1", PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, str(ROOT / "stages/prepare.py"), "--params", str(tmp_path / "params.yaml"),
                        "--out", str(tmp_path / "out"), "--report", str(tmp_path / "r.json")],
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-3000:]
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("prepare failed: ")]
    assert len(lines) == 1, p.stderr[-3000:]
    assert not (tmp_path / "out").exists()  # nothing half-written
    return lines[0]


def test_a_gated_dataset_without_a_token(tmp_path, hub_root):
    gate = hub_root / "datasets" / repos.MASKGROUPS_ID / ".gated"
    gate.write_text("hf_secret")
    try:
        with serve(hub_root) as server:
            line = prepare(tmp_path, server.url)
    finally:
        gate.unlink()
    assert "is gated and no token was given" in line and "HF_TOKEN" in line


def test_a_revision_the_hub_does_not_have(tmp_path, hub_root):
    with serve(hub_root) as server:
        line = prepare(tmp_path, server.url, hub_revision="0" * 40)
    assert "no such revision" in line and server.url in line


def test_a_missing_images_zip_and_a_missing_split(tmp_path, hub_root):
    with serve(hub_root) as server:
        line = prepare(tmp_path / "a", server.url, hub_images="images_missing.zip")
        assert "images_missing.zip" in line and "a file is missing" in line
        line = prepare(tmp_path / "b", server.url, hub_train_split="training")
    assert "data.hub_train_split='training' is not a split" in line and "['train', 'validation']" in line

"""bench/scale.py --dvc: the data stages by `dvc repro -s STAGE` in a fresh project copy, and what it measures."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_scale_bench_through_dvc_measures_the_cache_and_the_disk(tmp_path):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    p = subprocess.run([sys.executable, "bench/scale.py", "--rows", "60", "--work", str(tmp_path), "--dvc",
                        "-S", "render.size=64"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["dvc"] and set(summary["stages"]) == {"prepare", "negatives", "render", "train_read"}
    lock = (tmp_path / "repo" / "dvc.lock").read_text()
    assert all(f"  {s}:" in lock for s in ("prepare", "negatives", "render"))  # DVC really ran the stages
    # beyond the workspace's own files the cache holds only DVC's folder listings (.dir): no copy of an output
    listings = sum(f.stat().st_size for f in (tmp_path / "repo" / ".dvc" / "cache").rglob("*.dir"))
    assert summary["stages"]["train_read"]["dvc_cache_beyond"] == listings > 0
    for name in ("prepare", "negatives", "render"):
        stage = summary["stages"][name]
        assert stage["dvc_cache_beyond"] <= listings, f"{name}: the DVC cache holds a copy, not a link"
        assert stage["peak_rss"] > 0 and stage["written"] > 0
    disk = summary["disk"]
    assert disk["rendered"] > 0 and disk["total"] >= disk["source"] + disk["rendered"]
    assert "x inputs + shards" in p.stdout

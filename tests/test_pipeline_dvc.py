"""The data half through DVC itself, in a throw-away git repository: demo data and real rows."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from maskgate.data import masks
from maskgate.utils import tables
from tests import project
from tests.conftest import REALDATA

pytestmark = pytest.mark.slow
DATA_STAGES = ("prepare", "negatives", "render")


def sh(*cmd, cwd):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert p.returncode == 0, f"{' '.join(cmd)} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p.stdout


def project_copy(tmp: Path) -> Path:
    """The project (its working copy's files, not data, not the venv) in a fresh git repo, tmp/repo."""
    return project.project_copy(tmp / "repo")


def set_params(repo: Path, **dotted):
    p = yaml.safe_load((repo / "params.yaml").read_text())
    for key, value in dotted.items():
        section, name = key.split("__")
        p[section][name] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))


def out_hashes(repo: Path) -> dict:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {o["path"]: o["md5"] for s in DATA_STAGES for o in lock["stages"][s]["outs"]}


def check_outputs(repo: Path, max_iou: float):
    import json
    report = json.loads((repo / "reports/prepare.json").read_text())
    assert set(report) >= {"rows_in", "kept", "skipped"} and set(report["kept"]) == {"train", "val", "test"}
    train = {r["image"] for r in tables.read_table(repo / "data/prepared/rows-train.parquet")}
    val = {r["image"] for r in tables.read_table(repo / "data/prepared/rows-val.parquet")}
    assert train and val and not train & val
    neg = json.loads((repo / "reports/negatives.json").read_text())
    assert set(neg) >= {"refused_iou", "kinds"}
    first = {}
    overlays = {}
    for split in ("train", "val"):
        for e in tables.iter_shards(repo / "data/rendered", split):
            union = masks.union(masks.decode_group(e["masks"], e["height"], e["width"]))
            if e["kind"] == "positive":
                first[e["row_id"]] = union
            else:
                assert masks.iou(first[e["row_id"]], union) < max_iou
            key = (e["image"], tuple(sorted(e["masks"])))
            overlays.setdefault(key, set()).add((e["label"], e["overlay"]))
    mixed = [v for v in overlays.values() if {lab for lab, _ in v} == {0, 1}]
    assert mixed and all(len({o for _, o in v}) == 1 for v in mixed)  # label-blind rendering
    return report, neg


@pytest.mark.parametrize("source", ["demo", "realdata"])
def test_data_stages_through_dvc_are_byte_reproducible(tmp_path, source):
    repo = project_copy(tmp_path)
    if source == "demo":
        set_params(repo, data__source="demo", data__demo_images=40, render__size=64)
    else:
        set_params(repo, data__source="local", data__path=str(REALDATA), render__size=224)
    sh("dvc", "repro", "render", cwd=repo)
    first = out_hashes(repo)
    report, neg = check_outputs(repo, max_iou=0.9)
    sh("dvc", "repro", "--force", "render", cwd=repo)
    assert out_hashes(repo) == first
    assert "up to date" in sh("dvc", "status", "render", cwd=repo)
    if source == "realdata":
        assert report["rows_in"] == 276 and report["skipped"] == {}
        assert sum(neg["refused_iou"]["train"].values()) > 0  # realdata has same-group query pairs


def test_dvc_cache_holds_the_shards_once_linked_not_copied(tmp_path):
    """.dvc/config's cache.type: after `dvc repro`, each output file is the cache's own (a hardlink: the same
    inode; or a symlink into the cache), read-only, so the shards are on disk once, also after an experiment
    re-renders them. A forced rerun whose outputs are already cached is left as copies by DVC 3.67 (measured):
    `dvc checkout --relink` links them again (docs/reproducibility.md). Every cache object stays intact."""
    import hashlib

    repo = project_copy(tmp_path)
    set_params(repo, data__source="demo", data__demo_images=12, render__size=64)
    sh("dvc", "repro", "render", cwd=repo)
    cache = repo / ".dvc" / "cache" / "files" / "md5"

    def check_linked():
        objects = {}
        for p in cache.rglob("*"):
            if p.is_file() and not p.name.endswith(".dir"):
                objects[p.stat().st_ino] = p
                assert hashlib.md5(p.read_bytes()).hexdigest() == p.parent.name + p.name  # not corrupted
        outputs = [p for out in ("data/prepared", "data/negatives", "data/rendered")
                   for p in sorted((repo / out).rglob("*")) if p.is_file()]
        assert outputs
        for p in outputs:
            target = p.resolve()
            linked = (p.is_symlink() and cache in target.parents) or p.stat().st_ino in objects
            assert linked, f"{p.relative_to(repo)} is a copy of its cache object, not the object itself"
            assert not p.stat().st_mode & 0o222, f"{p.relative_to(repo)} is writable: DVC did not protect it"
        # no cache object holds a second copy of a workspace file: every content is on disk once
        contents = [hashlib.md5(p.read_bytes()).hexdigest() for p in objects.values()]
        assert len(contents) == len(set(contents))

    check_linked()
    set_params(repo, render__jpeg_quality=90)  # an experiment's re-render: new shards, committed as links
    sh("dvc", "repro", "render", cwd=repo)
    check_linked()
    sh("dvc", "repro", "--force", "render", cwd=repo)
    sh("dvc", "checkout", "--relink", *DATA_STAGES, cwd=repo)
    check_linked()
    assert "up to date" in sh("dvc", "status", *DATA_STAGES, cwd=repo).lower()

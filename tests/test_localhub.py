"""The local hub (tests/hub) answers huggingface_hub, datasets, transformers and peft over real HTTP.

The client calls run in subprocesses with HF_ENDPOINT pointing at the server and an empty HF_HOME:
huggingface_hub (and datasets, transformers through it) read HF_ENDPOINT once, at import, so only a
fresh interpreter meets the server the way a pipeline stage does. One subprocess makes several calls
(importing torch and transformers is most of its time) and reports, per call, its result or the
exception it raised, as JSON. The server's request log then shows that nothing went unanswered.

Raw HTTP details (Range, pagination, error headers, the CLI) are checked in this process.
"""
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REALDATA, ROOT, project_params
from tests.hub import repos
from tests.hub.server import serve

DATASET = repos.MASKGROUPS_ID
QWEN = repos.QWEN_ID
SHARDED = "localhub/tiny-sharded"
GATED_DATASET = "localhub/gated-maskgroups"
GATED_MODEL = "localhub/gated-tiny"
TOKEN = "hf_localhub_test_token"


@pytest.fixture(scope="session")
def hub_root(tmp_path_factory, tiny_qwen3vl_dir):
    """A hub folder: MaskGroups-HQ, the tiny Qwen3-VL (linked from the session's build), a sharded copy
    of it, and gated copies of both."""
    from transformers import Qwen3VLForConditionalGeneration

    root = tmp_path_factory.mktemp("localhub")
    data = repos.build_maskgroups(root)
    model = repos.build_qwen(root, project_params(), model_dir=tiny_qwen3vl_dir)
    sharded = root / "models" / SHARDED
    Qwen3VLForConditionalGeneration.from_pretrained(model).save_pretrained(sharded, max_shard_size="200KB")
    for src, dst in ((data, root / "datasets" / GATED_DATASET), (model, root / "models" / GATED_MODEL)):
        repos.link_tree(src, dst)
        (dst / ".gated").write_text(TOKEN + "\n")
    return root


@pytest.fixture(scope="session")
def hub(hub_root):
    with serve(hub_root) as server:
        yield server


def shas(root: Path) -> dict:
    """Each repo's expected commit sha, computed here from the files (the server's rule)."""
    out = {}
    for kind in ("models", "datasets"):
        for folder in sorted((root / kind).glob("*/*")):
            h = hashlib.sha1()
            for p in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != ".gated"):
                rel = p.relative_to(folder).as_posix()
                h.update(f"{rel}\0{hashlib.sha256(p.read_bytes()).hexdigest()}\n".encode())
            out[f"{folder.parent.name}/{folder.name}"] = h.hexdigest()
    return out


def client_env(tmp_path: Path, endpoint: str, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    home = tmp_path / "hf_home"
    env.update(
        HF_ENDPOINT=endpoint, HF_HOME=str(home), HF_HUB_CACHE=str(home / "hub"),
        HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_XET="1", HF_HUB_ETAG_TIMEOUT="5",
        HF_HUB_DOWNLOAD_TIMEOUT="10", HF_HUB_DISABLE_PROGRESS_BARS="1", PYTHONPATH=str(ROOT),
        TOKENIZERS_PARALLELISM="false",
    )
    env.update(extra)
    return {k: v for k, v in env.items() if v is not None}


# Shared head of every client script: `step` records a call's value or its exception.
PRELUDE = """
import json, sys
OUT = {}
def step(name, fn):
    try:
        OUT[name] = {"ok": fn()}
    except Exception as e:
        OUT[name] = {"error": type(e).__name__, "mro": [c.__name__ for c in type(e).__mro__],
                     "message": str(e)[:400]}
"""
EPILOGUE = """
with open(sys.argv[1], "w") as f:
    json.dump(OUT, f)
"""


def run_client(script: str, env: dict, tmp_path: Path, server=None, **args) -> tuple[dict, list]:
    """(results by step, the requests the server saw meanwhile) of `script` in a fresh interpreter."""
    out = tmp_path / "client.json"
    code = PRELUDE + "ARGS = " + json.dumps(args) + "\n" + textwrap.dedent(script) + EPILOGUE
    seen = len(server.requests) if server else 0
    p = subprocess.run([sys.executable, "-c", code, str(out)], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0 and out.is_file(), f"client failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return json.loads(out.read_text()), (server.requests[seen:] if server else [])


def ok(results: dict, name: str):
    r = results[name]
    assert "ok" in r, f"{name} raised {r['error']}: {r['message']}"
    return r["ok"]


def raised(results: dict, name: str) -> list[str]:
    r = results[name]
    assert "error" in r, f"{name} did not raise: {r}"
    return r["mro"]


def assert_all_handled(requests: list):
    assert requests, "the client made no request to the local hub"
    missing = [r for r in requests if not r["handled"]]
    assert not missing, f"requests the local hub could not answer: {missing}"


# ------------------------------------------------------------------------------------------------
# datasets and huggingface_hub

DATA_CLIENT = """
import hashlib
import datasets
from huggingface_hub import HfApi, HfFileSystem, hf_hub_download

api, repo = HfApi(), ARGS["dataset"]
step("dataset_sha", lambda: api.dataset_info(repo, revision="main").sha)
step("model_sha", lambda: api.model_info(ARGS["qwen"], revision="main").sha)
sha = OUT["dataset_sha"].get("ok")
step("zip", lambda: hashlib.sha256(open(hf_hub_download(repo, "images_resized.zip", repo_type="dataset",
                                                         revision=sha), "rb").read()).hexdigest())
step("splits_main", lambda: datasets.get_dataset_split_names(repo))
step("splits_sha", lambda: datasets.get_dataset_split_names(repo, revision=sha))
for split in ("train", "validation"):
    step(split, lambda: datasets.load_dataset(repo, split=split, revision=sha).to_list())
step("fs_glob", lambda: sorted(HfFileSystem().glob(f"datasets/{repo}@{sha}/data/*.parquet")))

# the pipeline's own reader, as params.yaml sets it: revision main, train and validation splits
def pipeline():
    from maskgate.data import sources
    src = sources.load_hub(repo, "main", "train", "validation", "images_resized.zip")
    rows = {role: list(it) for role, it in src.rows.items()}
    return {"roles": src.info["roles"], "commit": src.info["commit"], "rows": {r: len(v) for r, v in rows.items()},
            "image_bytes": len(src.images.read(rows["train"][0]["image"]))}
step("pipeline", pipeline)

# what Unsloth's loader asks the hub besides the plain downloads (read from its source; it cannot run here)
def unsloth_style():
    import os, struct
    from huggingface_hub import file_exists, get_safetensors_metadata, repo_exists, snapshot_download
    qwen, fs = ARGS["qwen"], HfFileSystem()
    with fs.open(f"{qwen}/model.safetensors", "rb", block_size=0) as f:  # a streamed read of the header
        header = struct.unpack("<Q", f.read(8))[0]
    return {"single": len(get_safetensors_metadata(qwen).weight_map),
            "sharded": len(get_safetensors_metadata(ARGS["sharded"]).weight_map),
            "header": header, "ls": len(fs.ls(qwen, detail=True)),
            "exists": [file_exists(qwen, "config.json"), file_exists(qwen, "nope"), repo_exists(qwen),
                       repo_exists("localhub/nope")],
            "snapshot": sorted(os.listdir(snapshot_download(qwen, allow_patterns=["*.json"])))}
step("unsloth_style", unsloth_style)

# failures
step("unknown_repo", lambda: api.dataset_info("localhub/nope"))
step("unknown_dataset", lambda: datasets.get_dataset_split_names("localhub/nope"))
step("missing_file", lambda: hf_hub_download(repo, "nope.txt", repo_type="dataset"))
step("bad_revision", lambda: hf_hub_download(repo, "README.md", repo_type="dataset", revision="0" * 40))
step("bad_revision_datasets", lambda: datasets.get_dataset_split_names(repo, revision="0" * 40))
step("missing_split", lambda: datasets.load_dataset(repo, split="test", revision=sha))
step("gated_download", lambda: hf_hub_download(ARGS["gated"], "images_resized.zip", repo_type="dataset"))
step("gated_datasets", lambda: datasets.get_dataset_split_names(ARGS["gated"]))
"""


@pytest.fixture(scope="module")
def data_run(hub, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("data_client")
    t0 = time.monotonic()
    results, requests = run_client(DATA_CLIENT, client_env(tmp, hub.url), tmp, hub, dataset=DATASET, qwen=QWEN,
                                   sharded=SHARDED, gated=GATED_DATASET)
    return results, requests, time.monotonic() - t0


def test_repo_info_gives_the_commit_sha(data_run, hub_root):
    results, _, _ = data_run
    expected = shas(hub_root)
    assert ok(results, "dataset_sha") == expected[DATASET]
    assert ok(results, "model_sha") == expected[QWEN]


def test_hf_hub_download_gives_the_exact_bytes(data_run, hub_root):
    results, requests, _ = data_run
    zip_path = hub_root / "datasets" / DATASET / "images_resized.zip"
    assert ok(results, "zip") == hashlib.sha256(zip_path.read_bytes()).hexdigest()
    sha = shas(hub_root)[DATASET]
    assert {"method": "GET", "path": f"/datasets/{DATASET}/resolve/{sha}/images_resized.zip"} in [
        {"method": r["method"], "path": r["path"]} for r in requests]


def test_datasets_sees_both_splits_and_the_rows_written(data_run):
    results, _, _ = data_run
    assert ok(results, "splits_main") == ["train", "validation"]
    assert ok(results, "splits_sha") == ["train", "validation"]
    rows = [json.loads(line) for line in (REALDATA / "maskgroups.jsonl").read_text().splitlines() if line.strip()]
    expected = repos.split_rows(rows)
    for split in ("train", "validation"):
        got = ok(results, split)
        assert got == expected[split]
        assert [r["id"] for r in got] == [str(i) for i in range(len(got))]
    train_images = {r["image"] for r in expected["train"]}
    assert train_images.isdisjoint(r["image"] for r in expected["validation"])
    sha = ok(results, "dataset_sha")
    assert ok(results, "fs_glob") == [f"datasets/{DATASET}@{sha}/data/{s}-00000-of-00001.parquet"
                                      for s in ("train", "validation")]


def test_the_pipeline_source_reads_the_local_hub(data_run):
    results, _, _ = data_run
    got = ok(results, "pipeline")
    assert got["roles"] == {"train": "train", "test": "validation"}
    assert got["commit"] == ok(results, "dataset_sha")
    assert got["rows"] == {"train": len(ok(results, "train")), "test": len(ok(results, "validation"))}
    assert got["image_bytes"] > 1000


def test_unsloth_style_hub_calls(data_run, hub_root):
    results, _, _ = data_run
    got = ok(results, "unsloth_style")
    assert got["single"] == got["sharded"] > 0
    with open(hub_root / "models" / QWEN / "model.safetensors", "rb") as f:
        assert got["header"] == int.from_bytes(f.read(8), "little")
    assert got["ls"] == len(list((hub_root / "models" / QWEN).iterdir()))
    assert got["exists"] == [True, False, True, False]
    assert got["snapshot"] == sorted(p.name for p in (hub_root / "models" / QWEN).glob("*.json"))


def test_dataset_failures_raise_the_libraries_own_errors(data_run):
    results, _, _ = data_run
    assert "RepositoryNotFoundError" in raised(results, "unknown_repo")
    assert "DatasetNotFoundError" in raised(results, "unknown_dataset")
    assert "EntryNotFoundError" in raised(results, "missing_file")
    assert "RevisionNotFoundError" in raised(results, "bad_revision")
    assert "DatasetNotFoundError" in raised(results, "bad_revision_datasets")
    assert "ValueError" in raised(results, "missing_split")
    assert "GatedRepoError" in raised(results, "gated_download")
    assert "DatasetNotFoundError" in raised(results, "gated_datasets")
    assert "gated" in results["gated_datasets"]["message"]


def test_every_dataset_request_was_answered(data_run):
    _, requests, _ = data_run
    assert_all_handled(requests)


TOKEN_CLIENT = """
import hashlib
import datasets
from huggingface_hub import hf_hub_download

repo = ARGS["gated"]
# first, while nothing is cached: with a cached copy hf_hub_download returns it despite the 403
step("wrong_token", lambda: hf_hub_download(repo, "README.md", repo_type="dataset", token="hf_wrong"))
step("zip", lambda: hashlib.sha256(open(hf_hub_download(repo, "images_resized.zip", repo_type="dataset"),
                                        "rb").read()).hexdigest())
step("splits", lambda: datasets.get_dataset_split_names(repo))
step("validation", lambda: len(datasets.load_dataset(repo, split="validation")))
"""


def test_a_gated_repo_opens_with_hf_token(hub, hub_root, tmp_path):
    # HF_HUB_DISABLE_XET left unset here: hf_xet is installed, and it must not be tried (no xet headers)
    env = client_env(tmp_path, hub.url, HF_TOKEN=TOKEN, HF_HUB_DISABLE_XET=None)
    results, requests = run_client(TOKEN_CLIENT, env, tmp_path, hub, gated=GATED_DATASET)
    zip_path = hub_root / "datasets" / GATED_DATASET / "images_resized.zip"
    assert ok(results, "zip") == hashlib.sha256(zip_path.read_bytes()).hexdigest()
    assert ok(results, "splits") == ["train", "validation"]
    assert ok(results, "validation") > 0
    mro = raised(results, "wrong_token")
    assert "GatedRepoError" in mro
    assert_all_handled(requests)
    assert [r["status"] for r in requests if r["status"] in (401, 403)] == [403]  # the wrong token only


# ------------------------------------------------------------------------------------------------
# transformers and peft

MODEL_CLIENT = """
import glob, os
import torch
from safetensors.torch import load_file
from transformers import Qwen3VLForConditionalGeneration, Qwen3VLProcessor
from huggingface_hub import hf_hub_download

def same_as_folder(model, folder):
    ref = {}
    for f in sorted(glob.glob(os.path.join(folder, "*.safetensors"))):
        ref.update(load_file(f))
    sd = model.state_dict()
    return {"tensors": len(ref), "equal": sum(torch.equal(sd[k], v) for k, v in ref.items() if k in sd)}

def single():
    m = Qwen3VLForConditionalGeneration.from_pretrained(ARGS["qwen"], revision=ARGS["sha"], use_safetensors=True)
    return same_as_folder(m, ARGS["qwen_dir"])
step("single", single)

def processor():
    p = Qwen3VLProcessor.from_pretrained(ARGS["qwen"], revision="main")
    local = Qwen3VLProcessor.from_pretrained(ARGS["qwen_dir"])
    return {"vocab": len(p.tokenizer) == len(local.tokenizer), "template": p.chat_template == local.chat_template,
            "image": p.image_processor.to_dict() == local.image_processor.to_dict(), "cls": type(p).__name__}
step("processor", processor)

def sharded():
    m = Qwen3VLForConditionalGeneration.from_pretrained(ARGS["sharded"], use_safetensors=True)
    return same_as_folder(m, ARGS["sharded_dir"])
step("sharded", sharded)

def maskgate_load():
    from maskgate.model import qwen as M
    m, p = M.load("qwen3-vl-8b")
    return same_as_folder(m, ARGS["qwen_dir"])
step("maskgate_load", maskgate_load)

def peft_roundtrip():
    from peft import LoraConfig, PeftModel, get_peft_model
    base = Qwen3VLForConditionalGeneration.from_pretrained(ARGS["qwen"], use_safetensors=True)
    peft = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft.save_pretrained(ARGS["adapter_dir"], safe_serialization=True)
    fresh = Qwen3VLForConditionalGeneration.from_pretrained(ARGS["qwen"], use_safetensors=True)
    loaded = PeftModel.from_pretrained(fresh, ARGS["adapter_dir"])
    a, b = peft.state_dict(), loaded.state_dict()
    lora = [k for k in a if "lora_A" in k]
    return {"lora": len(lora), "equal": sum(torch.equal(a[k], b[k]) for k in lora)}
step("peft", peft_roundtrip)

step("unknown_model", lambda: Qwen3VLForConditionalGeneration.from_pretrained("localhub/nope"))
step("gated_model", lambda: Qwen3VLForConditionalGeneration.from_pretrained(ARGS["gated"]))
step("missing_file", lambda: hf_hub_download(ARGS["qwen"], "nope.json"))
"""


@pytest.fixture(scope="module")
def model_run(hub, hub_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("model_client")
    results, requests = run_client(
        MODEL_CLIENT, client_env(tmp, hub.url), tmp, hub, qwen=QWEN, sha=shas(hub_root)[QWEN],
        qwen_dir=str(hub_root / "models" / QWEN), sharded=SHARDED, sharded_dir=str(hub_root / "models" / SHARDED),
        adapter_dir=str(tmp / "adapter"), gated=GATED_MODEL)
    return results, requests


def test_transformers_loads_the_tiny_model_and_processor(model_run):
    results, _ = model_run
    single = ok(results, "single")
    assert single["tensors"] > 0 and single["equal"] == single["tensors"]
    assert ok(results, "processor") == {"vocab": True, "template": True, "image": True, "cls": "Qwen3VLProcessor"}
    loaded = ok(results, "maskgate_load")  # the train stage's call for the qwen3-vl-8b preset
    assert loaded["equal"] == loaded["tensors"] > 0


def test_transformers_loads_a_sharded_model(model_run, hub_root):
    results, requests = model_run
    shards = sorted(p.name for p in (hub_root / "models" / SHARDED).glob("*.safetensors"))
    assert len(shards) > 2
    got = ok(results, "sharded")
    assert got["equal"] == got["tensors"] > 0
    fetched = {r["path"].rsplit("/", 1)[-1] for r in requests if r["method"] == "GET" and SHARDED in r["path"]}
    assert set(shards) | {"model.safetensors.index.json"} <= fetched


def test_peft_adapter_loads_with_hf_endpoint_set(model_run):
    results, _ = model_run
    got = ok(results, "peft")
    assert got["equal"] == got["lora"] > 0


def test_model_failures_raise_the_libraries_own_errors(model_run):
    results, _ = model_run
    assert "OSError" in raised(results, "unknown_model")
    assert "OSError" in raised(results, "gated_model")
    assert "gated" in results["gated_model"]["message"].lower()
    assert "EntryNotFoundError" in raised(results, "missing_file")


def test_every_model_request_was_answered(model_run):
    _, requests = model_run
    assert_all_handled(requests)


# ------------------------------------------------------------------------------------------------
# nothing listening

DOWN_CLIENT = """
from concurrent.futures import ThreadPoolExecutor
import datasets
from huggingface_hub import hf_hub_download
from transformers import Qwen3VLForConditionalGeneration

calls = {
    "splits": lambda: datasets.get_dataset_split_names(ARGS["dataset"]),
    "download": lambda: hf_hub_download(ARGS["dataset"], "images_resized.zip", repo_type="dataset"),
    "from_pretrained": lambda: Qwen3VLForConditionalGeneration.from_pretrained(ARGS["qwen"], use_safetensors=True),
}
with ThreadPoolExecutor(len(calls)) as pool:  # side by side: each spends its time in the same retry waits
    list(pool.map(lambda kv: step(*kv), calls.items()))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_server_down_errors(tmp_path):
    """What each library raises when nothing listens on HF_ENDPOINT (the pipeline's messages key on these).

    Slow: huggingface_hub retries a refused connection five times (1+2+4+8+8 s) before it gives up,
    and from_pretrained makes three such calls one after the other (about 70 s in all).
    """
    env = client_env(tmp_path, f"http://127.0.0.1:{free_port()}")
    results, _ = run_client(DOWN_CLIENT, env, tmp_path, dataset=DATASET, qwen=QWEN)
    assert "ConnectionError" in raised(results, "splits")
    assert "LocalEntryNotFoundError" in raised(results, "download")
    assert "OSError" in raised(results, "from_pretrained")


# ------------------------------------------------------------------------------------------------
# raw HTTP, in this process


def http(url: str, method: str = "GET", headers: dict | None = None, data: bytes | None = None):
    req = urllib.request.Request(url, method=method, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_resolve_headers_and_ranges(hub, hub_root):
    sha = shas(hub_root)[DATASET]
    data = (hub_root / "datasets" / DATASET / "images_resized.zip").read_bytes()
    url = f"{hub.url}/datasets/{DATASET}/resolve/main/images_resized.zip"
    status, h, body = http(url, "HEAD")
    assert status == 200 and body == b""
    assert h["X-Repo-Commit"] == sha and h["Content-Length"] == str(len(data))
    assert h["ETag"] == f'"{hashlib.sha256(data).hexdigest()}"' == h["X-Linked-Etag"]
    assert http(url, headers={"Range": "bytes=10-19"})[::2] == (206, data[10:20])
    assert http(url, headers={"Range": "bytes=-7"})[::2] == (206, data[-7:])
    status, h, body = http(url, headers={"Range": f"bytes={len(data) - 3}-"})
    assert (status, body, h["Content-Range"]) == (206, data[-3:], f"bytes {len(data) - 3}-{len(data) - 1}/{len(data)}")
    assert http(url, headers={"Range": f"bytes={len(data)}-"})[0] == 416
    readme = (hub_root / "datasets" / DATASET / "README.md").read_bytes()
    status, h, body = http(f"{hub.url}/datasets/{DATASET}/resolve/{sha}/README.md")
    blob_id = hashlib.sha1(b"blob %d\0" % len(readme) + readme).hexdigest()
    assert (status, body, h["ETag"]) == (200, readme, f'"{blob_id}"')  # a plain (non-LFS) file: its git blob id


def test_a_large_file_is_lfs_and_downloads_whole(tmp_path):
    from huggingface_hub import hf_hub_download

    repo = tmp_path / "hub" / "models" / "localhub" / "big"
    repo.mkdir(parents=True)
    data = os.urandom(12 * 1024 * 1024)  # over the hub's 10 MB LFS threshold, whatever the suffix
    (repo / "weights.dat").write_bytes(data)
    with serve(tmp_path / "hub") as server:
        status, h, _ = http(f"{server.url}/localhub/big/resolve/main/weights.dat", "HEAD")
        assert h["X-Linked-Size"] == str(len(data)) and h["X-Linked-Etag"] == f'"{hashlib.sha256(data).hexdigest()}"'
        # an explicit endpoint and cache: huggingface_hub's module constants stay out of it
        path = hf_hub_download("localhub/big", "weights.dat", endpoint=server.url, cache_dir=tmp_path / "cache")
        assert Path(path).read_bytes() == data
        assert not server.unhandled()


def test_error_shapes(hub):
    def error(path, **kw):
        status, h, body = http(hub.url + path, **kw)
        return status, h.get("X-Error-Code"), json.loads(body)["error"]

    assert error("/api/models/localhub/nope") == (404, "RepoNotFound", "Repository not found")
    assert error(f"/{QWEN}/resolve/main/nope.json")[:2] == (404, "EntryNotFound")
    assert error(f"/api/datasets/{DATASET}/revision/refs%2Fconvert%2Fparquet")[:2] == (404, "RevisionNotFound")
    assert error(f"/datasets/{DATASET}/resolve/refs%2Fconvert%2Fparquet/README.md")[:2] == (404, "RevisionNotFound")
    assert error(f"/api/datasets/{DATASET}/parquet")[:2] == (404, "RevisionNotFound")
    assert error(f"/datasets/{GATED_DATASET}/resolve/main/README.md")[:2] == (401, "GatedRepo")
    wrong = {"Authorization": "Bearer hf_wrong"}
    assert error(f"/datasets/{GATED_DATASET}/resolve/main/README.md", headers=wrong)[:2] == (403, "GatedRepo")
    right = {"Authorization": f"Bearer {TOKEN}"}
    assert http(f"{hub.url}/datasets/{GATED_DATASET}/resolve/main/README.md", headers=right)[0] == 200
    info = json.loads(http(f"{hub.url}/api/datasets/{GATED_DATASET}")[2])  # as on the hub: info is open
    assert info["gated"] == "manual" and ".gated" not in [s["rfilename"] for s in info["siblings"]]
    assert http(f"{hub.url}/datasets/{GATED_DATASET}/resolve/main/.gated", headers=right)[0] == 404
    viewer = {"Host": f"datasets-server.{hub.url.split('//')[1]}"}  # datasets' dataset-viewer calls, if they get here
    assert error(f"/info?dataset={DATASET}", headers=viewer)[0] == 404


def test_unhandled_requests_are_logged_and_answered_404(hub_root, capsys):
    with serve(hub_root) as server:
        status, _, body = http(f"{server.url}/api/spaces/foo/bar?x=1")
        assert status == 404 and "error" in json.loads(body)
        assert http(f"{server.url}/api/models/{QWEN}", method="DELETE")[0] == 404
        assert [(r["method"], r["path"], r["query"]) for r in server.unhandled()] == [
            ("GET", "/api/spaces/foo/bar", "x=1"), ("DELETE", f"/api/models/{QWEN}", "")]
    err = capsys.readouterr().err
    assert "localhub: unhandled GET /api/spaces/foo/bar?x=1" in err
    assert f"localhub: unhandled DELETE /api/models/{QWEN}" in err


def test_tree_pages_and_paths_info(hub_root):
    from huggingface_hub import HfApi

    with serve(hub_root, page_size=2) as server:
        api = HfApi(endpoint=server.url)  # an explicit endpoint: read at each call, unlike HF_ENDPOINT
        files = sorted(p.relative_to(hub_root / "models" / SHARDED).as_posix()
                       for p in (hub_root / "models" / SHARDED).rglob("*") if p.is_file())
        assert len(files) > 2
        assert sorted(api.list_repo_files(SHARDED)) == files
        pages = [r for r in server.requests if "/tree/" in r["path"]]
        assert len(pages) == -(-len(files) // 2)
        tree = list(api.list_repo_tree(DATASET, repo_type="dataset", expand=True))
        assert {(type(e).__name__, e.path) for e in tree} == {
            ("RepoFolder", "data"), ("RepoFile", "README.md"), ("RepoFile", "images_resized.zip")}
        info = api.get_paths_info(DATASET, ["data", "images_resized.zip", "nope"], repo_type="dataset")
        assert [(type(e).__name__, e.path) for e in info] == [("RepoFolder", "data"),
                                                              ("RepoFile", "images_resized.zip")]
        assert info[1].lfs.sha256 == hashlib.sha256(
            (hub_root / "datasets" / DATASET / "images_resized.zip").read_bytes()).hexdigest()
        assert not server.unhandled()


def test_maskgroups_build_is_byte_identical(tmp_path):
    a, b = repos.build_maskgroups(tmp_path / "a"), repos.build_maskgroups(tmp_path / "b")
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert [str(f) for f in files] == ["README.md", "data/train-00000-of-00001.parquet",
                                       "data/validation-00000-of-00001.parquet", "images_resized.zip"]
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    import zipfile

    with zipfile.ZipFile(a / "images_resized.zip") as z:
        names = z.namelist()
    assert names == sorted(f"images_resized/{p.name}" for p in (REALDATA / "images").iterdir())


def test_clis_serve_and_link(hub_root, tiny_qwen3vl_dir, tmp_path):
    root = tmp_path / "hub"
    p = subprocess.run([sys.executable, "-m", "tests.hub.repos", str(root), "--model-dir", str(tiny_qwen3vl_dir),
                        "--repo-id", "unsloth/Qwen3-VL-8B-Instruct-unsloth-bnb-4bit"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    linked = root / "models" / "unsloth" / "Qwen3-VL-8B-Instruct-unsloth-bnb-4bit" / "model.safetensors"
    assert linked.stat().st_ino == (tiny_qwen3vl_dir / "model.safetensors").stat().st_ino  # a hard link
    ready = tmp_path / "ready"
    server = subprocess.Popen([sys.executable, "-m", "tests.hub.server", str(root), "--ready-file", str(ready)],
                              cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists() and time.monotonic() < deadline and server.poll() is None:
            time.sleep(0.05)
        url = ready.read_text().strip()
        status, _, body = http(f"{url}/api/models/unsloth/Qwen3-VL-8B-Instruct-unsloth-bnb-4bit")
        assert status == 200 and json.loads(body)["sha"] == shas(root)["unsloth/Qwen3-VL-8B-Instruct-unsloth-bnb-4bit"]
    finally:
        server.terminate()
        server.wait(timeout=10)
    shutil.rmtree(root)

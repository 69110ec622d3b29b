"""Faults a research pipeline meets on rented machines: broken input, killed runs, leaked secrets.

Every test drives the real stage scripts (`python stages/<stage>.py`) as a user would and checks
what the user gets: the exit status, a one-line error naming the file or row and the reason, or a
counted skip with its reason in the stage's report; the good rows through byte for byte; and never
a Python traceback. docs/FAULTS.md lists each fault with what the user sees and the test that
checks it.
"""
import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import yaml
from PIL import Image

from maskgate.data import negatives
from maskgate.data import prepare, prepared
from maskgate.utils import tables
from test_training import render_tiny
from tests.conftest import ROOT, box_mask, jpeg_bytes, make_row, project_params, rle, settings

TRACEBACK = "Traceback (most recent call last)"
STAGES = ("prepare", "negatives", "render", "train", "evaluate", "audit_sample")
# The package of this checkout (not whatever copy an editable install points at), no network, no GPU.
ENV = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")


def stage(name: str, *args, env=None) -> subprocess.CompletedProcess:
    """Run one stage script; no traceback may reach the user, whatever the exit status."""
    p = subprocess.run([sys.executable, str(ROOT / "stages" / f"{name}.py"), *map(str, args)],
                       capture_output=True, text=True, env=env or ENV, cwd=ROOT)
    assert TRACEBACK not in p.stderr, f"{name} printed a traceback:\n{p.stderr[-3000:]}"
    return p


def failed(p: subprocess.CompletedProcess, name: str, *words: str) -> str:
    """The stage failed with one clear line `<name> failed: ...` holding every one of `words`."""
    assert p.returncode == 1, f"exit {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}"
    line = next((ln for ln in p.stderr.splitlines() if ln.startswith(f"{name} failed: ")), None)
    assert line is not None, p.stderr[-2000:]
    for w in words:
        assert w in line, f"{w!r} not in {line!r}"
    return line


def write_params(path: Path, **sections) -> Path:
    """params.yaml with some sections' keys replaced."""
    p = project_params()
    for section, values in sections.items():
        if isinstance(p.get(section), dict) and isinstance(values, dict):
            p[section].update(values)
        else:
            p[section] = values
    path.write_text(yaml.safe_dump(p, sort_keys=False))
    return path


def encoded(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------
# prepare: one rows file holding every kind of broken row between good ones

H, W = 40, 60
POOL = [rle(box_mask(H, W, 2, 12, 2, 14)), rle(box_mask(H, W, 20, 35, 30, 50)), rle(box_mask(H, W, 15, 25, 5, 20))]
MODE_IMAGES = {  # decoded to RGB and rendered like any JPEG
    "gray.jpg": encoded(Image.new("L", (W, H), 128), "JPEG"),
    "cmyk.jpg": encoded(Image.new("CMYK", (W, H), (0, 60, 120, 0)), "JPEG"),
    "alpha.png": encoded(Image.new("RGBA", (W, H), (0, 0, 0, 0)), "PNG"),  # fully transparent black
    "palette.png": encoded(Image.new("RGB", (W, H), (30, 160, 90)).convert("P"), "PNG"),
}
GOOD_JPEG = jpeg_bytes(H, W)
# Each broken line: (what is wrong, the line, the reason it must be counted under).
# A dict is a row; bytes/str are raw lines.
BROKEN = [
    ("corrupt JPEG", make_row("corrupt_jpeg", "corrupt.jpg", "the box", POOL, [[0]]), "undecodable_image"),
    ("truncated JPEG", make_row("truncated_jpeg", "truncated.jpg", "the box", POOL, [[0]]), "undecodable_image"),
    ("zero-size image file", make_row("zero_size_image", "empty.jpg", "the box", POOL, [[0]]), "undecodable_image"),
    ("missing image", make_row("missing_image", "nope.jpg", "the box", POOL, [[0]]), "missing_image"),
    ("name escaping with ..", make_row("escape_dotdot", "../outside.jpg", "the box", POOL, [[0]]), "unsafe_image_name"),
    ("absolute name", make_row("escape_absolute", "/etc/hostname", "the box", POOL, [[0]]), "unsafe_image_name"),
    ("name escaping inside a path", make_row("escape_nested", "sub/../../outside.jpg", "the box", POOL, [[0]]),
     "unsafe_image_name"),
    ("RLE counts not RLE", make_row("rle_garbage", "img0.jpg", "the box", [{"size": [H, W], "counts": "zzz"}], [[0]]),
     "bad_rle"),
    ("RLE counts short of the size",
     make_row("rle_short", "img0.jpg", "the box", [{"size": [H, W], "counts": rle(box_mask(20, W, 2, 9, 2, 9))["counts"]}],
              [[0]]), "bad_rle"),
    ("RLE size 0x0", make_row("rle_zero_size", "img0.jpg", "the box", [{"size": [0, 0], "counts": ""}], [[0]]), "bad_rle"),
    ("RLE size not [h, w]", make_row("rle_size_one", "img0.jpg", "the box", [{"size": [H], "counts": POOL[0]["counts"]}],
                                     [[0]]), "bad_rle"),
    ("RLE counts a list", make_row("rle_counts_list", "img0.jpg", "the box", [{"size": [H, W], "counts": [3, 4]}], [[0]]),
     "bad_rle"),
    ("RLE counts not ASCII", make_row("rle_not_ascii", "img0.jpg", "the box", [{"size": [H, W], "counts": "é9"}], [[0]]),
     "bad_rle"),
    ("mask size differs from the image (another aspect ratio)",
     make_row("mask_other_size", "img0.jpg", "the box", [rle(box_mask(H, 70, 2, 9, 2, 9))], [[0]]), "mask_size_mismatch"),
    ("group index out of range", make_row("index_high", "img0.jpg", "the box", POOL, [[7]]), "index_out_of_range"),
    ("negative group index", make_row("index_negative", "img0.jpg", "the box", POOL, [[-1]]), "index_out_of_range"),
    ("empty group", make_row("empty_group", "img0.jpg", "the box", POOL, [[]]), "empty_group"),
    ("group covering no pixel", make_row("no_pixel_group", "img0.jpg", "the box", [rle(box_mask(H, W, 0, 0, 0, 0))], [[0]]),
     "empty_group"),
    ("no group", make_row("no_group", "img0.jpg", "the box", POOL, []), "no_group"),
    ("empty query", make_row("empty_query", "img0.jpg", "", POOL, [[0]]), "empty_query"),
    ("whitespace query", make_row("blank_query", "img0.jpg", " \t \n ", POOL, [[0]]), "empty_query"),
    ("very long query", make_row("long_query", "img0.jpg", "the box " * 1000, POOL, [[0]]), "query_too_long"),
    ("reference-mask query (not handled yet)", make_row("mask_ref", "img0.jpg", "like <mask-ref>", POOL, [[0]]),
     "mask_ref_query"),
    ("no id", make_row("", "img0.jpg", "the box", POOL, [[0]]), "bad_row"),
    ("a line that is not an object", "[1, 2, 3]", "bad_row"),
    ("a line that is not JSON", '{"id": "cut_short", "image": "img0.jp', "bad_json"),
    ("bytes that are not UTF-8", b'{"id": "latin1", "image": "caf\xe9.jpg"}', "not_utf8"),
    ("duplicate row id", make_row("img1-a", "img1.jpg", "a second row with an id already seen", POOL, [[1]]),
     "duplicate_id"),
]


def good_rows() -> list[dict]:
    rows = []
    for i in range(8):
        rows.append(make_row(f"img{i}-a", f"img{i}.jpg", "the top box", POOL, [[0]]))
        rows.append(make_row(f"img{i}-b", f"img{i}.jpg", "the lower boxes", POOL, [[1, 2]]))
    for name in MODE_IMAGES:
        stem = name.split(".")[0]
        rows.append(make_row(f"{stem}-a", name, "the top box", POOL, [[0]]))
        rows.append(make_row(f"{stem}-b", name, "the right box", POOL, [[1]]))
    return rows


RESCALED = make_row("img2-rescaled", "img2.jpg", "the top box", [rle(box_mask(2 * H, 2 * W, 4, 24, 4, 28))], [[0]])


def write_fault_source(root: Path) -> tuple[Path, list[dict]]:
    """A local source (rows.jsonl + images/) with good rows and every broken row of BROKEN between them."""
    images = root / "images"
    images.mkdir(parents=True)
    for i in range(8):
        (images / f"img{i}.jpg").write_bytes(jpeg_bytes(H, W, (25 * i, 100, 200 - 20 * i)))
    for name, data in MODE_IMAGES.items():
        (images / name).write_bytes(data)
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    (images / "truncated.jpg").write_bytes(GOOD_JPEG[: len(GOOD_JPEG) // 2])
    (images / "empty.jpg").write_bytes(b"")
    (root / "outside.jpg").write_bytes(GOOD_JPEG)  # a real image, just outside images/
    good = good_rows()
    order = []  # (line, the reason it must be skipped for, or None for a good row), broken rows between good ones
    for i, row in enumerate(good + [RESCALED]):
        order.append((row, None))
        if i < len(BROKEN):
            order.append(BROKEN[i][1:])
    order += [b[1:] for b in BROKEN[len(good) + 1:]]
    as_bytes = lambda line: line if isinstance(line, bytes) else (line if isinstance(line, str) else json.dumps(line)).encode()
    (root / "rows.jsonl").write_bytes(b"\n".join(as_bytes(line) for line, _ in order) + b"\n")
    return root, good, [reason for _, reason in order]


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    """The fault source through prepare (prepare.max_bad_fraction raised so it completes), negatives and render."""
    work = tmp_path_factory.mktemp("faulty")
    source, good, reasons = write_fault_source(work / "source")
    params = write_params(work / "params.yaml", data={"source": "local", "path": str(source)},
                          prepare={"max_bad_fraction": 0.9, "val_fraction": 0.25},
                          render={"size": 64, "workers": 1, "shard_size": 50})
    runs = {
        "prepare": stage("prepare", "--params", params, "--out", work / "prepared", "--report", work / "prepare.json"),
        "negatives": stage("negatives", "--params", params, "--prepared", work / "prepared", "--out",
                           work / "negatives", "--report", work / "negatives.json"),
        "render": stage("render", "--params", params, "--prepared", work / "prepared", "--negatives",
                        work / "negatives", "--out", work / "rendered", "--report", work / "render.json"),
    }
    for name, p in runs.items():
        assert p.returncode == 0, f"{name}: {p.stderr[-3000:]}"
    return {"work": work, "source": source, "good": good, "reasons": reasons, "params": params, "runs": runs,
            "report": json.loads((work / "prepare.json").read_text())}


def test_prepare_counts_each_broken_row_under_its_reason(faulty):
    report = faulty["report"]
    expected = {}
    for _, _, reason in BROKEN:
        expected[reason] = expected.get(reason, 0) + 1
    assert report["skipped"] == expected
    assert report["rows_in"] == len(faulty["good"]) + 1 + len(BROKEN)
    assert sum(report["kept"].values()) == len(faulty["good"]) + 1
    assert report["masks_rescaled"] == 1  # RESCALED: same aspect ratio, twice the size: kept, counted
    assert f"skipped {dict(sorted(expected.items()))}" in faulty["runs"]["prepare"].stdout


def test_each_broken_row_on_its_own_gets_its_reason(faulty):
    """Row by row (the counts above could hide two rows swapping reasons): each line of the fault file,
    validated alone, is kept if good and skipped under its own reason if broken."""
    from maskgate.data import sources
    from maskgate.config import GATE_LIMITS
    from maskgate.data.validation import validate_all

    source = sources.load_local(faulty["source"])

    raws, store = source.rows["train"], source.images
    raws = list(raws)
    assert len(raws) == len(faulty["reasons"])
    for raw, reason in zip(raws, faulty["reasons"]):
        if reason == "duplicate_id":  # only a duplicate next to the first row with its id
            continue
        rows, skipped, _ = validate_all([raw], store, "rescale", GATE_LIMITS)
        assert skipped["counts"] == ({reason: 1} if reason else {}), (raw, skipped)
        assert len(rows) == (0 if reason else 1)


# What the report's example of each reason says, besides where the row is (its first broken row).
EXAMPLE_SAYS = {
    "undecodable_image": "corrupt.jpg: UnidentifiedImageError", "missing_image": "nope.jpg",
    "unsafe_image_name": "'../outside.jpg'", "bad_rle": "mask 0: RLE counts hold 'z', outside the RLE alphabet",
    "mask_size_mismatch": "mask 0 is 40x70, image is 40x60", "index_out_of_range": "index 7 into a pool of 3",
    "empty_group": "group 0 is []: not a non-empty list", "no_group": "gt_mask_pool / gt_mask_group missing or empty",
    "empty_query": "empty_query", "query_too_long": "query_too_long: 7999 characters",
    "mask_ref_query": "not handled yet", "bad_row": "bad_row: no id", "bad_json": "bad_json",
    "not_utf8": "can't decode byte 0xe9", "duplicate_id": "duplicate_id: img1-a",
}


def test_prepare_names_an_example_of_each_reason(faulty):
    """Each reason has an example naming the row (its id) or the line (file:line) and what is wrong."""
    examples = faulty["report"]["skipped_examples"]
    assert set(examples) == set(faulty["report"]["skipped"]) == set(EXAMPLE_SAYS)
    first = {}
    for _, line, reason in BROKEN:
        first.setdefault(reason, line)
    for reason, line in first.items():
        if isinstance(line, dict):
            assert f"(id {line['id']})" in examples[reason], (reason, examples[reason])
        else:
            assert examples[reason].startswith("rows.jsonl:"), (reason, examples[reason])
        assert EXAMPLE_SAYS[reason] in examples[reason], (reason, examples[reason])


def test_zero_size_and_truncated_images_say_so(tmp_path):
    """The report keeps one example per reason; each image fault on its own says what is wrong with the file."""
    images = tmp_path / "source" / "images"
    images.mkdir(parents=True)
    (images / "empty.jpg").write_bytes(b"")
    (images / "truncated.jpg").write_bytes(GOOD_JPEG[: len(GOOD_JPEG) // 2])
    for name, says in (("empty.jpg", "empty.jpg: empty file (0 bytes)"), ("truncated.jpg", "truncated.jpg: OSError")):
        (tmp_path / "source" / "rows.jsonl").write_text(json.dumps(make_row("r", name, "q", POOL, [[0]])) + "\n")
        params = write_params(tmp_path / "params.yaml", data={"source": "local", "path": str(tmp_path / "source")})
        p = stage("prepare", "--params", params, "--out", tmp_path / "prepared", "--report", tmp_path / "prepare.json")
        failed(p, "prepare", "1 of 1 train rows are bad")
        assert f"undecodable_image: 1  e.g. row 0 (id r): undecodable_image: {says}" in p.stderr


def test_prepare_keeps_good_rows_byte_for_byte(faulty):
    """Kept rows are exactly the good ones: same query, same RLE strings, same image bytes as the source."""
    out, source = faulty["work"] / "prepared", faulty["source"]
    kept = {r["row_id"]: r for split in ("train", "val") for r in prepared.read_rows(out, split)}
    good = {r["id"]: r for r in faulty["good"]}
    assert set(kept) == set(good) | {RESCALED["id"]}
    for row_id, row in good.items():
        k = kept[row_id]
        assert k["image"] == row["image"] and (k["height"], k["width"]) == (H, W)
        assert k["query"] == row["conversations"][0]["value"].split("<mask_pool>\n", 1)[1]
        assert k["groups"] == [[row["gt_mask_pool"][i]["counts"] for i in g] for g in row["gt_mask_group"]]
    assert kept["img1-a"]["query"] == "the top box"  # the first row with a duplicated id is the one kept
    copied = {r["image"]: r["bytes"] for split in ("train", "val") for r in tables.iter_shards(out, f"images-{split}")}
    assert set(copied) == {r["image"] for r in good.values()}
    for name, data in copied.items():
        assert data == (source / "images" / name).read_bytes(), name


def test_grayscale_cmyk_alpha_and_palette_images_render(faulty):
    """The good rows go on through negatives and render; odd image modes come out as RGB overlays,
    transparent pixels over white (a transparent black PNG does not turn black)."""
    work = faulty["work"]
    shards = [r for split in ("train", "val") for r in tables.iter_shards(work / "rendered", split)]
    report = json.loads((work / "render.json").read_text())
    assert len(shards) == sum(report["examples"].values())
    positives = {r["row_id"] for r in shards if r["kind"] == "positive"}
    assert positives == {r["id"] for r in faulty["good"]} | {RESCALED["id"]}
    for name in MODE_IMAGES:
        overlays = [r["overlay"] for r in shards if r["image"] == name]
        assert overlays, name
        img = Image.open(io.BytesIO(overlays[0]))
        assert img.mode == "RGB" and img.size == (64, 64)
        if name == "alpha.png":
            assert min(img.getpixel((58, 44))) > 220  # inside the picture, outside every mask: white


def test_too_many_bad_rows_stop_prepare_with_each_reason(faulty, tmp_path):
    """With the default prepare.max_bad_fraction (5%) the same file is refused: exit 1, every reason with
    an example, no output folder and no report."""
    params = write_params(tmp_path / "params.yaml", data={"source": "local", "path": str(faulty["source"])})
    p = stage("prepare", "--params", params, "--out", tmp_path / "prepared", "--report", tmp_path / "prepare.json")
    failed(p, "prepare", "rows are bad", "prepare.max_bad_fraction")
    for reason in {r for _, _, r in BROKEN} - {"mask_ref_query"}:
        assert f"  {reason}: " in p.stderr, reason
    assert not (tmp_path / "prepared").exists() and not (tmp_path / "prepare.json").exists()


@pytest.mark.parametrize("fault", ["json_not_utf8", "json_not_a_list", "parquet_cut_short", "no_rows_file",
                                   "no_images_folder", "no_such_folder"])
def test_unreadable_rows_file_or_folder_is_one_clear_error(tmp_path, fault):
    source = tmp_path / "source"
    (source / "images").mkdir(parents=True)
    words = {
        "json_not_utf8": ("rows.json", "not a valid UTF-8 JSON file"),
        "json_not_a_list": ("rows.json", "must hold a list of rows"),
        "parquet_cut_short": ("rows.parquet", "not a readable parquet file"),
        "no_rows_file": ("no rows file",),
        "no_images_folder": ("images folder not found",),
        "no_such_folder": ("data.path is not a folder",),
    }[fault]
    if fault == "json_not_utf8":
        (source / "rows.json").write_bytes(b'[{"id": "caf\xe9"}]')
    elif fault == "json_not_a_list":
        (source / "rows.json").write_text('{"id": "x"}')
    elif fault == "parquet_cut_short":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(good_rows()), source / "rows.parquet")
        data = (source / "rows.parquet").read_bytes()
        (source / "rows.parquet").write_bytes(data[: len(data) // 2])
    elif fault == "no_images_folder":
        (source / "rows.jsonl").write_text(json.dumps(good_rows()[0]) + "\n")
        (source / "images").rmdir()
    elif fault == "no_such_folder":
        shutil.rmtree(source)
    params = write_params(tmp_path / "params.yaml", data={"source": "local", "path": str(source)})
    p = stage("prepare", "--params", params, "--out", tmp_path / "prepared", "--report", tmp_path / "prepare.json")
    failed(p, "prepare", *words)
    assert not (tmp_path / "prepared").exists() and not (tmp_path / "prepare.json").exists()


# ------------------------------------------------------------------------------------------------
# later stages: missing or cut-short inputs, and the params file itself


def cut_short(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def dvc_paths(stage_name: str, folder: Path) -> list[str]:
    """The stage's path arguments as dvc.yaml's cmd has them, under `folder`."""
    argv = shlex.split(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage_name]["cmd"])[2:]
    return [str(folder / a) if not a.startswith("--") else a for a in argv]


@pytest.mark.parametrize("stage_name", STAGES)
@pytest.mark.parametrize("fault", ["missing", "not_yaml", "not_a_mapping", "misspelt_key", "missing_section",
                                   "missing_key", "wrong_type"])
def test_params_file_missing_or_broken(tmp_path, stage_name, fault):
    """Every stage checks the whole file before it reads a single input: one line naming the key and the reason."""
    params = tmp_path / "params.yaml"
    p = project_params()
    if fault == "not_yaml":
        params.write_text("data:\n  source: [demo\n")
    elif fault == "not_a_mapping":
        params.write_text("- just\n- a list\n")
    elif fault != "missing":
        if fault == "misspelt_key":  # what `dvc exp run -S evaluate.target_precison=0.9` writes
            p["evaluate"]["target_precison"] = 0.9
        elif fault == "missing_section":
            del p["audit_sample"]
        elif fault == "missing_key":
            del p["train"]["lora"]["r"]
        else:
            p["render"]["size"] = "672"
        params.write_text(yaml.safe_dump(p))
    out = stage(stage_name, "--params", params, *dvc_paths(stage_name, tmp_path))
    assert out.returncode == 1 and len(out.stderr.splitlines()) == 1, out.stderr
    says = {"missing": f"params: cannot read {params}", "not_yaml": f"params: {params} is not valid YAML",
            "not_a_mapping": f"params: {params} must hold a mapping", "misspelt_key": "evaluate.target_precison: unknown key",
            "missing_section": "audit_sample: missing", "missing_key": "train.lora.r: missing",
            "wrong_type": "render.size: input should be a valid integer, got '672'"}[fault]
    assert out.stderr.startswith(f"{stage_name} failed: ") and says in out.stderr, out.stderr
    assert not any((tmp_path / d).exists() for d in ("data", "models", "reports"))  # nothing written


def test_negatives_without_or_with_cut_short_prepare_output(faulty, tmp_path):
    work, params = faulty["work"], faulty["params"]
    p = stage("negatives", "--params", params, "--prepared", tmp_path / "nope", "--out", tmp_path / "neg",
              "--report", tmp_path / "neg.json")
    failed(p, "negatives", str(tmp_path / "nope"))
    prepared = copy(work / "prepared", tmp_path / "prepared")
    cut_short(prepared / "rows-train.parquet")
    p = stage("negatives", "--params", params, "--prepared", prepared, "--out", tmp_path / "neg",
              "--report", tmp_path / "neg.json")
    failed(p, "negatives", "rows-train.parquet", "not a readable parquet file")
    assert not (tmp_path / "neg").exists() and not (tmp_path / "neg.json").exists()


def test_render_refuses_negatives_whose_images_are_not_prepared(faulty, tmp_path):
    """Negatives from another prepare run: an example without its image is an error, never a silent drop."""
    work, params = faulty["work"], faulty["params"]
    prepared = copy(work / "prepared", tmp_path / "prepared")
    for shard in prepared.glob("images-train-*.parquet"):
        shard.unlink()
    p = stage("render", "--params", params, "--prepared", prepared, "--negatives", work / "negatives",
              "--out", tmp_path / "rendered", "--report", tmp_path / "render.json")
    failed(p, "render", "train images named in the negatives are not in", "re-run prepare and negatives")
    assert not (tmp_path / "rendered").exists() and not (tmp_path / "render.json").exists()
    p = stage("render", "--params", params, "--prepared", work / "prepared", "--negatives", tmp_path / "nope",
              "--out", tmp_path / "rendered", "--report", tmp_path / "render.json")
    failed(p, "render", str(tmp_path / "nope"))


# ------------------------------------------------------------------------------------------------
# render killed half-way


def render_params(path: Path) -> Path:
    """Enough demo scenes that render takes a few seconds over several image batches."""
    return write_params(path, data={"source": "demo", "demo_images": 160},
                        render={"size": 160, "workers": 2, "shard_size": 50})


def digest(folder: Path) -> dict:
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def start_stage(name: str, *args) -> subprocess.Popen:
    """A stage in its own process group, so a kill takes its worker processes too (as a lost machine does).

    Its output goes to a file, not a pipe: a full pipe nobody reads would stall it.
    """
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, str(ROOT / "stages" / f"{name}.py"), *map(str, args)], env=ENV,
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    proc.log = log
    return proc


def output_of(proc: subprocess.Popen) -> str:
    proc.log.seek(0)
    return proc.log.read().decode(errors="replace")


def kill_when(proc: subprocess.Popen, ready, timeout: float = 300) -> None:
    """SIGKILL the process group as soon as `ready()` is true; fail if the stage ended first."""
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, f"the stage ended (exit {proc.returncode}) before it could be killed:\n" \
                                    f"{output_of(proc)[-2000:]}"
        assert time.time() < deadline, "timed out waiting to kill the stage"
        time.sleep(0.02)
    assert proc.poll() is None, "the stage ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert TRACEBACK not in output_of(proc)


def test_render_killed_half_way_leaves_no_partial_output_and_reruns_identically(tmp_path):
    params = render_params(tmp_path / "params.yaml")
    p = yaml.safe_load(params.read_text())
    s = settings(p)
    prepare.prepare(s.data, s.prepare, s.seed, tmp_path / "prepared", s.limits)
    negatives.build(tmp_path / "prepared", tmp_path / "negatives", s.negatives, s.seed)
    inputs = ("--params", params, "--prepared", tmp_path / "prepared", "--negatives", tmp_path / "negatives")

    ref = stage("render", *inputs, "--out", tmp_path / "reference", "--report", tmp_path / "reference.json")
    assert ref.returncode == 0, ref.stderr[-2000:]

    out, report = tmp_path / "data" / "rendered", tmp_path / "reports" / "render.json"
    out.mkdir(parents=True)
    (out / "train-00000.parquet").write_bytes(b"the previous run's output")  # what DVC last cached
    before = digest(out)
    proc = start_stage("render", *inputs, "--out", out, "--report", report)
    temp = out.with_name(f".{out.name}.tmp")
    kill_when(proc, lambda: temp.is_dir() and any(temp.glob("train-*.parquet")))
    assert digest(out) == before  # the old output untouched: nothing half-written where DVC looks
    assert not report.exists()

    again = stage("render", *inputs, "--out", out, "--report", report)
    assert again.returncode == 0, again.stderr[-2000:]
    assert digest(out) == digest(tmp_path / "reference")
    assert report.read_bytes() == (tmp_path / "reference.json").read_bytes()
    assert sorted(p.name for p in out.parent.iterdir()) == ["rendered"]  # the temporary folder is gone


# ------------------------------------------------------------------------------------------------
# train killed half-way (tiny preset)

TINY_TRAIN = {
    "backend": "hf", "batch_size": 4, "micro_batch_size": 4, "epochs": 1, "save_steps": 2, "keep_checkpoints": 2,
    "eval_steps": 0, "eval_examples": 0, "logging_steps": 1, "max_text_tokens": 64,
    "lora": {"r": 4, "alpha": 8, "dropout": 0.1, "targets": ["q_proj", "v_proj"], "modules_to_save": []},
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Demo data rendered small, and one uninterrupted train stage run on it (the reference)."""
    work = tmp_path_factory.mktemp("tiny_train")
    params = write_params(work / "params.yaml", data={"source": "demo", "demo_images": 6},
                          prepare={"val_fraction": 0.34}, negatives={"per_positive": 3},
                          render={"size": 64, "workers": 1}, model={"preset": "tiny"}, lr=1e-3, train=TINY_TRAIN)
    p = yaml.safe_load(params.read_text())
    render_tiny(p, work)
    run = train_stage(params, work / "rendered", work / "straight")
    assert run.returncode == 0, run.stderr[-3000:]
    return {"work": work, "params": params, "rendered": work / "rendered", "straight": work / "straight",
            "report": json.loads((work / "straight" / "train_summary.json").read_text())}


def train_args(params: Path, rendered: Path, folder: Path) -> list:
    return ["--params", params, "--rendered", rendered, "--out", folder / "verifier", "--checkpoints",
            folder / "checkpoints", "--live", folder / "live", "--report", folder / "train.json",
            "--summary", folder / "train_summary.json"]


def train_stage(params: Path, rendered: Path, folder: Path) -> subprocess.CompletedProcess:
    return stage("train", *train_args(params, rendered, folder))


def complete_checkpoints(folder: Path) -> list[int]:
    """Steps of the checkpoints saved to the end (trainer_state.json, written last, reads back)."""
    steps = []
    for c in folder.glob("checkpoint-*"):
        try:
            steps.append(int(json.loads((c / "trainer_state.json").read_text())["global_step"]))
        except (OSError, ValueError, KeyError):
            pass
    return sorted(steps)


def test_train_killed_half_way_resumes_from_its_last_checkpoint(tiny_run, tmp_path):
    straight = tiny_run["report"]
    assert straight["global_step"] == straight["max_steps"] >= 6 and straight["resumed_from_step"] == 0
    folder = tmp_path / "run"
    proc = start_stage("train", *train_args(tiny_run["params"], tiny_run["rendered"], folder))
    kill_when(proc, lambda: complete_checkpoints(folder / "checkpoints"))
    assert not (folder / "train.json").exists() and not (folder / "verifier" / "adapter").exists()
    last = complete_checkpoints(folder / "checkpoints")[-1]
    assert 0 < last < straight["max_steps"]

    again = train_stage(tiny_run["params"], tiny_run["rendered"], folder)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"train: resuming from {folder / 'checkpoints' / f'checkpoint-{last}'} (step {last})" in again.stdout
    resumed = json.loads((folder / "train_summary.json").read_text())
    assert resumed["resumed_from_step"] == last
    assert resumed["global_step"] == resumed["max_steps"] == straight["global_step"]
    # Optimizer, scheduler, RNG and data order come back with the checkpoint: the same adapter as without the kill.
    import torch
    from safetensors.torch import load_file

    ours = load_file(str(folder / "verifier" / "adapter" / "adapter_model.safetensors"))
    theirs = load_file(str(tiny_run["straight"] / "verifier" / "adapter" / "adapter_model.safetensors"))
    assert ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-5, atol=1e-6)


def test_checkpoint_cut_short_by_a_kill_while_saving_is_not_resumed(tmp_path):
    """The Trainer writes trainer_state.json last: a checkpoint without it (or without safetensors
    weights) is removed, and the run resumes from the one before."""
    from maskgate.model.checkpoints import last_complete_checkpoint

    for step in (2, 4, 6):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "adapter_model.safetensors").write_bytes(b"")
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (tmp_path / "checkpoint-6" / "trainer_state.json").unlink()  # killed while saving step 6
    (tmp_path / "checkpoint-4" / "adapter_model.safetensors").unlink()  # weights only as a pickle
    (tmp_path / "checkpoint-4" / "adapter_model.bin").write_bytes(b"")
    said = []
    assert last_complete_checkpoint(tmp_path, said.append) == str(tmp_path / "checkpoint-2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2"]
    assert "not saved to the end" in said[0] and "no safetensors weights" in said[1]


def test_train_without_or_with_cut_short_shards(tiny_run, tmp_path):
    p = stage("train", *train_args(tiny_run["params"], tmp_path / "nope", tmp_path / "run"))
    failed(p, "train", "no train-*.parquet shards", str(tmp_path / "nope"))
    rendered = copy(tiny_run["rendered"], tmp_path / "rendered")
    cut_short(rendered / "train-00000.parquet")
    p = stage("train", *train_args(tiny_run["params"], rendered, tmp_path / "run"))
    failed(p, "train", "train-00000.parquet", "not a readable parquet file")
    assert not (tmp_path / "run" / "train.json").exists()


def test_evaluate_and_audit_sample_without_their_inputs(tiny_run, tmp_path):
    params = tiny_run["params"]
    out = ["--metrics", tmp_path / "m.json", "--breakdown", tmp_path / "b.json", "--plots", tmp_path / "plots",
           "--operating-point", tmp_path / "op.json", "--scores", tmp_path / "scores"]
    p = stage("evaluate", "--params", params, "--rendered", tiny_run["rendered"], "--model", tmp_path / "nope", *out)
    failed(p, "evaluate", "verifier.json not found", "run `dvc repro train`")
    rendered = copy(tiny_run["rendered"], tmp_path / "rendered")
    cut_short(rendered / "val-00000.parquet")
    p = stage("evaluate", "--params", params, "--rendered", rendered, "--model", tiny_run["straight"] / "verifier", *out)
    failed(p, "evaluate", "val-00000.parquet", "not a readable parquet file")
    assert not (tmp_path / "m.json").exists()
    p = stage("audit_sample", "--params", params, "--scores", tmp_path / "nope.parquet", "--rendered",
              tiny_run["rendered"], "--out", tmp_path / "audit")
    failed(p, "audit_sample", "nope.parquet")
    assert not (tmp_path / "audit").exists()


# ------------------------------------------------------------------------------------------------
# safety: safetensors only, no remote code, no token in any output


def as_pickle(folder: Path, name: str, new_name: str) -> None:
    """Replace a safetensors weights file by the same tensors as a torch pickle (.bin)."""
    import torch
    from safetensors.torch import load_file

    tensors = load_file(str(folder / name))
    (folder / name).unlink()
    torch.save(tensors, folder / new_name)


@pytest.mark.parametrize("what", ["adapter", "base"])
def test_weights_saved_only_as_pickle_are_refused(tiny_run, tmp_path, what):
    """A verifier whose adapter or base weights are a .bin pickle: evaluate refuses it by name."""
    model = copy(tiny_run["straight"] / "verifier", tmp_path / "verifier")
    if what == "adapter":
        as_pickle(model / "adapter", "adapter_model.safetensors", "adapter_model.bin")
        words = ("adapter folder", "adapter_model.bin", "loads weights only from safetensors")
    else:
        as_pickle(model / "base", "model.safetensors", "pytorch_model.bin")
        words = ("base model folder", "pytorch_model.bin", "loads weights only from safetensors")
    p = stage("evaluate", "--params", tiny_run["params"], "--rendered", tiny_run["rendered"], "--model", model,
              "--metrics", tmp_path / "m.json", "--breakdown", tmp_path / "b.json", "--plots", tmp_path / "plots",
              "--operating-point", tmp_path / "op.json", "--scores", tmp_path / "scores")
    failed(p, "evaluate", *words)


def test_remote_code_in_a_model_folder_never_runs(tiny_run, tmp_path):
    """A base folder whose config points at custom code (auto_map): loading it does not import that code."""
    from maskgate.model import qwen as M
    base = copy(tiny_run["straight"] / "verifier" / "base", tmp_path / "base")
    marker = tmp_path / "remote_code_ran"
    (base / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                                  "from transformers import Qwen3VLConfig as EvilConfig, "
                                  "Qwen3VLForConditionalGeneration as EvilModel, Qwen3VLProcessor as EvilProcessor\n")
    for name, maps in (("config.json", {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel",
                                        "AutoModelForImageTextToText": "evil.EvilModel"}),
                       ("processor_config.json", {"AutoProcessor": "evil.EvilProcessor"})):
        cfg = json.loads((base / name).read_text())
        cfg["auto_map"] = maps
        (base / name).write_text(json.dumps(cfg))
    model, processor = M.load(base)
    assert type(model).__name__ == "Qwen3VLForConditionalGeneration"
    assert not marker.exists()


# Drawn at run time, so no file of the project (this one included) holds it before a run writes it.
FAKE_TOKEN = "hf_fake" + uuid.uuid4().hex


def test_hub_token_not_printed_when_the_hub_is_unreachable(tmp_path):
    params = write_params(tmp_path / "params.yaml", data={"source": "hub"})
    p = stage("prepare", "--params", params, "--out", tmp_path / "prepared", "--report", tmp_path / "prepare.json",
              env=dict(ENV, HF_TOKEN=FAKE_TOKEN, HF_HOME=str(tmp_path / "hf_home")))
    failed(p, "prepare", "not in the cache and HF_HUB_OFFLINE is set", "data.source=local", "data.source=demo")
    assert FAKE_TOKEN not in p.stdout + p.stderr
    for path in tmp_path.rglob("*"):  # params, the hub cache folder, anything written
        assert not path.is_file() or FAKE_TOKEN.encode() not in path.read_bytes(), path


@pytest.mark.slow
def test_hub_token_lands_in_no_output_of_a_full_pipeline_run(tmp_path):
    """HF_TOKEN set for a whole `dvc exp run` of the six stages (tiny demo): the token is in no file of the
    repository (params, dvc.lock, reports, models, DVC's temporary and cache files, git refs), in no commit
    of the experiment, and in nothing printed."""
    from tests.test_experiments import SMALL_DEMO
    from tests.test_pipeline_dvc import project_copy

    repo = project_copy(tmp_path)
    # PYTHONPATH: the stages import the copy's package
    env = dict(ENV, HF_TOKEN=FAKE_TOKEN, PYTHONPATH=str(repo), PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    run = subprocess.run(["dvc", "exp", "run", "-n", "token", *SMALL_DEMO], cwd=repo, env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    shown = subprocess.run(["dvc", "exp", "show", "--json"], cwd=repo, env=env, capture_output=True, text=True).stdout
    assert '"token"' in shown  # the experiment record exists, so the search covers it
    history = subprocess.run(["git", "log", "--all", "-p"], cwd=repo, env=env, capture_output=True, text=True).stdout
    assert "refs/exps" in subprocess.run(["git", "for-each-ref"], cwd=repo, capture_output=True, text=True).stdout
    for text in (run.stdout, run.stderr, shown, history):
        assert FAKE_TOKEN not in text
    searched = set()
    for path in repo.rglob("*"):
        if path.is_file() and ".git/objects" not in path.as_posix():
            assert FAKE_TOKEN.encode() not in path.read_bytes(), path
            searched.add(path.relative_to(repo).as_posix())
    for must in ("params.yaml", "dvc.lock", "reports/prepare.json", "reports/train.json", "reports/train_summary.json", "reports/metrics.json",
                 "models/verifier/verifier.json", "reports/audit/index.html"):
        assert must in searched, must

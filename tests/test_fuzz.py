"""No line can kill a run: generated manifest lines and prepare rows, well-formed and malformed, in
every mask form, through the real commands in a subprocess whose memory is capped.

Hypothesis draws a batch of lines per example (so each example is one subprocess run of many
lines, a few runs in all): good lines in each mask form, lines that break one rule, and lines made
to reach C code badly (sizes past any image, NaN and 5000-digit numbers, runs that do not add up,
polygons far outside, images that declare billions of pixels, JSON nested past Python's recursion
limit, bytes that are not UTF-8, a line past limits.max_line_bytes). The run must end with exit 0,
no traceback, and every line exactly once in results.jsonl: the good lines scored, the rest with a
known reason. Derandomized, so CI draws the same lines every time.
"""
import json
import os
import resource
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from maskgate.data import masks
from tests.conftest import ROOT, box_mask, jpeg_bytes, make_row, project_params
from tests.test_gate import small_verifier  # noqa: F401  (fixture)

H, W = 40, 60
CAP = 3 << 30  # bytes of data segment the command may use: a run-away allocation fails instead of swapping
# Small limits, so the fuzz reaches each one with small lines (and the limits given in params are the ones used).
LIMITS = {"max_line_bytes": 20_000, "max_image_pixels": 100_000, "max_mask_pixels": 10_000, "max_masks_per_group": 8,
          "max_polygon_vertices": 64, "max_polygon_perimeter": 5_000, "polygon_margin": 0.5}
REASONS = {"bad_json", "bad_line", "not_utf8", "missing_image", "undecodable_image", "empty_query", "query_too_long",
           "bad_mask", "empty_group", "over_limit"}
# No shrinking: each example is a subprocess run of seconds, and the failing line is named in the assertion.
RUNS = settings(max_examples=3, deadline=None, derandomize=True, database=None, phases=[Phase.generate],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture, HealthCheck.large_base_example])


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height 1-bit pixels and whose data is one empty row: a file
    of a few dozen bytes that a decoder trusting the header would allocate for in full."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b"")


def cap_memory():
    resource.setrlimit(resource.RLIMIT_DATA, (CAP, CAP))  # not RLIMIT_AS: torch maps gigabytes of CUDA libraries


def run_capped(cmd: list, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                          preexec_fn=cap_memory, timeout=900)


def params_file(path, **sections) -> str:
    p = project_params()
    p["limits"] = dict(LIMITS)
    for name, changes in sections.items():
        p[name].update(changes)
    path.write_text(yaml.safe_dump(p))
    return str(path)


# -- mask forms -------------------------------------------------------------------------------------

def runs_of(m: np.ndarray) -> list[int]:
    flat = m.flatten(order="F")
    out, value, count = [], False, 0
    for v in flat:
        if v != value:
            out.append(count)
            value, count = v, 0
        count += 1
    return out + [count]


boxes = st.tuples(st.integers(0, H - 3), st.integers(2, H), st.integers(0, W - 3), st.integers(2, W)).map(
    lambda t: (t[0], min(H, t[0] + t[1]), t[2], min(W, t[2] + t[3])))


def rectangle(y0, y1, x0, x1) -> list[float]:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


good_masks = st.one_of(
    boxes.map(lambda b: {"size": [H, W], "counts": masks.encode(box_mask(H, W, *b))}),
    boxes.map(lambda b: {"size": [H, W], "counts": runs_of(box_mask(H, W, *b))}),
    boxes.map(lambda b: {"size": [2 * H, 2 * W], "counts": masks.encode(box_mask(2 * H, 2 * W, *(2 * v for v in b)))}),
    boxes.map(lambda b: rectangle(*b)),
    st.lists(boxes, min_size=1, max_size=3).map(lambda bs: [rectangle(*b) for b in bs]),
    st.just("mask.png"),
)

rle_alphabet = st.text(alphabet=[chr(c) for c in range(48, 112)], max_size=80)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(), st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                                 st.dictionaries(st.text(max_size=6), inner, max_size=4)),
                           max_leaves=12)
sizes = st.one_of(st.lists(json_scalars, max_size=3), st.tuples(st.integers(-5, 10**9), st.integers(-5, 10**9)).map(list),
                  json_scalars)
coordinates = st.one_of(st.floats(), st.integers(-10**15, 10**15), st.floats(-1e6, 1e6))

bad_masks = st.one_of(
    st.builds(lambda s, c: {"size": s, "counts": c}, sizes, st.one_of(rle_alphabet, st.lists(st.integers(), max_size=8))),
    st.builds(lambda n, c: {"size": [n, n], "counts": c}, st.integers(101, 10**7), rle_alphabet),  # huge declared size
    rle_alphabet.map(lambda c: {"size": [H, W], "counts": c}),  # runs that rarely add up
    st.lists(st.integers(-10**20, 10**20), max_size=30).map(lambda c: {"size": [H, W], "counts": c}),
    st.text(max_size=8).map(lambda c: {"size": [H, W], "counts": c + "\u00e9"}),
    st.lists(coordinates, min_size=0, max_size=20),  # NaN, inf, 1e15, odd lengths
    st.integers(65, 200).map(lambda n: [float(i % W) for i in range(2 * n)]),  # over max_polygon_vertices
    st.just([0, 0, 5000, 0, 5000, 10, 0, 10]),  # far outside the image
    st.just([0, 0, 60, 40] * 15),  # edges over max_polygon_perimeter
    st.sampled_from(["bomb.png", "nope.png", "../mask.png", "x" * 5000, "sub", "photo.jpg", "mask\u0000.png", ""]),
    json_values,
)

# Lines written as text, for what json.dumps cannot write: numbers past Python's 4300-digit limit,
# the NaN token where a polygon wants numbers, nesting past the recursion limit, broken UTF-8.
GOOD_TAIL = '"image": "photo.jpg", "query": "the box", "masks": ["mask.png"]}'
TRICKS = [
    '{"id": ' + "9" * 5000 + ", " + GOOD_TAIL,
    '{"image": "photo.jpg", "query": "q", "masks": [[' + "1" * 5000 + ", 2, 3, 4, 5, 6]]}",
    '{"image": "photo.jpg", "query": "q", "masks": [{"size": [' + "4" * 5000 + ', 60], "counts": "0"}]}',
    '{"image": "photo.jpg", "query": "q", "masks": [[NaN, 1, 20, 1, 20, 20]]}',
    '{"image": "photo.jpg", "query": "q", "masks": [[1e400, 1, 20, 1, 20, 20]]}',
    '{"image": "photo.jpg", "query": "q", "masks": [[-Infinity, 1, 20, 1, 20, 20]]}',
    "[" * 5000 + "]" * 5000,
    '{"x": ' + "[" * 3000 + "]" * 3000 + ", " + GOOD_TAIL,
    '{"image": "photo.jpg", "query": "\\ud800", "masks": ["mask.png"]}',
    '{"image": "\\ud800.jpg", "query": "q", "masks": ["mask.png"]}',
    '{"image": "photo.jpg", "query": "q", "masks": ["\\udc80.png"]}',
    '{"image": "bomb.png", "query": "q", "masks": ["mask.png"]}',
    '{"image": "photo.jpg", "query": "q", "masks": ["bomb.png"]}',
    '{"image": "' + "y" * 5000 + '.jpg", "query": "q", "masks": ["mask.png"]}',
    '{"image": "photo.jpg", "query": "q", "masks": [' + ", ".join(['"mask.png"'] * 9) + "]}",
    '{"pad": "' + "x" * 30_000 + '", ' + GOOD_TAIL,  # over max_line_bytes
    '{"input_error": {"reason": "bad_mask", "detail": "made by hand"}, ' + GOOD_TAIL,
    '{"id": {"nested": [1, 2]}, ' + GOOD_TAIL,
]


def line_of(obj) -> bytes:
    return json.dumps(obj).encode()


def not_blank(b: bytes) -> bool:
    return bool(b.strip()) and bool(b.decode("utf-8", "surrogateescape").strip())


good_lines = st.builds(lambda i, q, ms: ("good", line_of({"id": i, "image": "photo.jpg", "query": q, "masks": ms})),
                       st.text(max_size=10), st.sampled_from(["the box", "all boxes", "  the   red box "]),
                       st.lists(good_masks, min_size=1, max_size=4))
bad_lines = st.one_of(
    st.builds(lambda ms: line_of({"image": "photo.jpg", "query": "the box", "masks": ms}),
              st.lists(st.one_of(good_masks, bad_masks), min_size=1, max_size=3).filter(
                  lambda ms: any(not isinstance(m, str) or m != "mask.png" for m in ms))),
    st.builds(lambda img, q, ms: line_of({"image": img, "query": q, "masks": ms}),
              json_values, json_values, json_values),
    st.sampled_from(TRICKS).map(str.encode),
    st.binary(max_size=200).map(lambda b: b.replace(b"\n", b" ")).filter(not_blank),
    st.text(max_size=100).map(lambda t: t.replace("\n", " ").encode("utf-8", "surrogatepass")).filter(not_blank),
    st.just(b'{"image": "photo.jpg", "query": "caf\xe9", "masks": ["mask.png"]}'),
    st.just(b'{"image": "photo.jpg",\r "query": "q", "masks": ["mask.png"]}'),
).map(lambda b: ("bad", b))
# Every trick in every manifest, among the drawn lines: the lines known to reach C code badly are never left
# to chance (a few examples of a few dozen lines would miss some).
manifests = st.lists(st.one_of(good_lines, bad_lines), min_size=40, max_size=80).flatmap(
    lambda drawn: st.permutations(drawn + [("bad", t.encode()) for t in TRICKS]))


def photo_folder(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sub").mkdir(exist_ok=True)
    (folder / "photo.jpg").write_bytes(jpeg_bytes(H, W))
    from tests.test_gate import png_bytes

    (folder / "mask.png").write_bytes(png_bytes(box_mask(H, W, 5, 20, 10, 40)))
    (folder / "bomb.png").write_bytes(png_header(200_000, 200_000))  # 40 G pixels in 70 bytes
    return folder


@RUNS
@given(lines=manifests)
def test_no_manifest_line_kills_the_gate(tmp_path_factory, small_verifier, lines):
    work = photo_folder(tmp_path_factory.mktemp("manifest"))
    (work / "manifest.jsonl").write_bytes(b"".join(text + b"\n" for _, text in lines))
    params = params_file(work / "params.yaml")
    p = run_capped([sys.executable, "-m", "maskgate", "verify", work / "manifest.jsonl", "--model", small_verifier,
                    "--threshold", "0.5", "--out", work / "out", "--device", "cpu", "--quiet", "--params", params,
                    "--batch-size", "8"], work)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    results = [json.loads(t) for t in (work / "out" / "results.jsonl").read_text().splitlines()]
    assert [r["line"] for r in results] == list(range(1, len(lines) + 1))  # every line, once, in order
    for (kind, text), r in zip(lines, results):
        if kind == "good":
            assert "p_accept" in r and 0.0 <= r["p_accept"] <= 1.0, (text[:300], r)
        else:
            assert ("p_accept" in r) != ("error" in r), r
        if "error" in r:
            assert r["error"] in REASONS, (text[:300], r)
            if r["error"] == "over_limit":
                assert "limits." in r["detail"], r  # the detail names the key
    summary = json.loads((work / "out" / "summary.json").read_text())
    assert summary["lines"] == len(lines) == summary["auto_pass"] + summary["needs_review"]
    routed = sum(1 for name in ("auto_pass.jsonl", "needs_review.jsonl")
                 for _ in (work / "out" / name).read_text().splitlines())
    assert routed == len(lines)


# -- prepare's rows on a local source ---------------------------------------------------------------

POOL = [{"size": [H, W], "counts": masks.encode(box_mask(H, W, 2, 12, 2, 14))},
        {"size": [H, W], "counts": masks.encode(box_mask(H, W, 20, 35, 30, 50))}]
ROW_TAIL = ('"image": "a.jpg", "conversations": [{"from": "human", "value": "<mask_pool> the box"}], '
            '"gt_mask_pool": ' + json.dumps(POOL) + ', "gt_mask_group": [[0]]}')
ROW_TRICKS = [
    '{"id": ' + "9" * 5000 + ", " + ROW_TAIL,
    '{"id": "deep", "x": ' + "[" * 3000 + "]" * 3000 + ", " + ROW_TAIL,
    "[" * 5000 + "]" * 5000,
    '{"id": "big", "image": "a.jpg", "conversations": [{"from": "human", "value": "<mask_pool> q"}], '
    '"gt_mask_pool": [{"size": [' + "7" * 5000 + ', 60], "counts": "0"}], "gt_mask_group": [[0]]}',
    '{"id": "pad", "pad": "' + "x" * 30_000 + '", ' + ROW_TAIL,
]


rows = st.one_of(
    st.builds(lambda i: ("good", line_of(make_row(f"g{i}", "a.jpg", "the box", POOL, [[0], [1]]))), st.integers(0, 10**6)),
    st.builds(lambda i, pool, groups, img: ("bad", line_of(make_row(f"b{i}", img, "the box", pool, groups))),
              st.integers(0, 10**6), st.lists(st.one_of(st.sampled_from(POOL), bad_masks), max_size=4),
              st.lists(st.lists(st.one_of(st.integers(-2, 5), json_scalars), max_size=12), max_size=3),
              st.sampled_from(["a.jpg", "bomb.png", "missing.jpg", "../a.jpg", "x" * 5000])),
    st.sampled_from(ROW_TRICKS).map(lambda t: ("bad", t.encode())),
    json_values.map(lambda v: ("bad", line_of(v))),
    st.binary(max_size=120).map(lambda b: b.replace(b"\n", b" ")).filter(not_blank).map(lambda b: ("bad", b)),
)


@RUNS
@given(raw=st.lists(rows, min_size=30, max_size=60).flatmap(
    lambda drawn: st.permutations(drawn + [("bad", t.encode()) for t in ROW_TRICKS])))
def test_no_row_kills_prepare(tmp_path_factory, raw):
    work = tmp_path_factory.mktemp("rows")
    source = work / "source"
    (source / "images").mkdir(parents=True)
    (source / "images" / "a.jpg").write_bytes(jpeg_bytes(H, W))
    (source / "images" / "bomb.png").write_bytes(png_header(200_000, 200_000))
    raw = [("good", line_of(make_row("first", "a.jpg", "the box", POOL, [[0]])))] + raw  # something to keep
    (source / "rows.jsonl").write_bytes(b"".join(text + b"\n" for _, text in raw))
    params = params_file(work / "params.yaml", data={"source": "local", "path": str(source)},
                         prepare={"max_bad_fraction": 1.0})
    p = run_capped([sys.executable, "stages/prepare.py", "--params", params, "--out", work / "prepared",
                    "--report", work / "prepare.json"], ROOT)
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    assert p.returncode == 0, p.stderr[-3000:]
    report = json.loads((work / "prepare.json").read_text())
    assert report["rows_in"] == len(raw)  # every row counted: kept or skipped under a reason
    assert sum(report["kept"].values()) + sum(report["skipped"].values()) == len(raw)
    ids = {json.loads(t)["id"] for kind, t in raw if kind == "good"}
    assert sum(report["kept"].values()) >= len(ids)  # every good row kept (a repeated id counts once)
    for reason, example in report["skipped_examples"].items():
        assert len(example) < 5000, (reason, example[:200])  # a detail names the row, never copies a huge value
    if "over_limit" in report["skipped"]:
        assert "limits." in report["skipped_examples"]["over_limit"]

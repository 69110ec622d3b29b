#!/usr/bin/env python3
"""The gate's memory over a long manifest: peak RSS and lines/s of `maskgate verify` on the CPU.

    python bench/gate_memory.py [--lines 100000] [--out bench/results/gate-memory-DATE.json]

Builds, in a temporary folder (or --work):

* a manifest of N lines from the real photos and masks of samples/coco-groups: each of its 276 rows
  (62 COCO photos) becomes a candidate in turn, its masks as compressed RLE, uncompressed RLE (run
  lengths) or one mask image file per object, and one line in 20 is a bad line (a missing image, a
  mask past limits.max_mask_pixels, a line that is not JSON), so every path of parse_line runs;
* an untrained verifier of the demo model's shapes: the tiny preset (TinySize's shapes, as
  configs/demo.yaml leaves them), render.size 96 and outline_width 1 as the demo renders, the token
  budget the demo trains with. Its weights are random: speed and memory do not depend on their values.

then runs `python -m maskgate verify` on it as a subprocess (--threshold given, no operating point;
the project's params.yaml for the scoring settings and limits, batch size --batch-size) and samples
the process's resident memory every second with psutil, and its progress from scores.jsonl.

Prints and writes (JSON): lines/s over the scoring phase and over the whole run, peak RSS, RSS
when 10%, 50% and 90% of the lines were scored, how long the routing at the end took, and the
summary's counts. Flat memory means RSS at 90% close to RSS at 10%.
"""
from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples" / "coco-groups"
sys.path.insert(0, str(ROOT))

from maskgate import config  # noqa: E402
from maskgate.data import masks  # noqa: E402


def demo_params() -> config.Params:
    """params.yaml with configs/demo.yaml applied: the demo's render style and model shapes."""
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    return config.from_dict(config.overlay(base, yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())), "demo")


def build_verifier(out: Path, p: config.Params) -> Path:
    """An untrained verifier folder as the train stage saves one: tiny base, LoRA adapter, verifier.json."""
    from peft import LoraConfig, get_peft_model

    from maskgate.model import qwen as M
    from maskgate.model import verifier

    M.build_tiny(out / "base", p.prompt, seed=p.seed, **M.preset_size("tiny", p.model.tiny))
    base, processor = M.load(out / "base")
    peft = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft.save_pretrained(out / "adapter", safe_serialization=True)
    summary = {"preset": "tiny", "backend": "hf", "max_length": p.train.max_text_tokens + M.image_token_count(p.render.size),
               "base_model": {"repo": str(out / "base"), "revision": None, "load_in_4bit": False, "prequantized": False},
               "prompt_tokens": M.prompt_tokens(processor, p.prompt)}
    verifier.write_manifest(out, summary, p.prompt, p.render)
    return out


def run_lengths(m: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE of a mask: run lengths in column-major order, starting with 0s."""
    flat = m.flatten(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat[0] else runs


def candidates(work: Path) -> list[dict]:
    """Per sample row, its query, image and right group in three mask forms (mask files written under work/)."""
    out = []
    for row in (json.loads(t) for t in (SAMPLES / "maskgroups.jsonl").read_text().splitlines()):
        query = row["conversations"][0]["value"].split("<mask_pool>", 1)[1].strip()
        pool = row["gt_mask_pool"]
        group = [pool[i] for i in row["gt_mask_group"][0]]
        files = []
        for k, rle in enumerate(group):
            m = masks.decode(rle["counts"], *rle["size"])
            name = f"masks/{row['id']}-{k}.png"
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()
            Image.fromarray(m.astype(np.uint8) * 255).save(buf, format="PNG")
            (work / name).write_bytes(buf.getvalue())
            files.append(name)
        out.append({"image": str(SAMPLES / "images" / row["image"]), "query": query,
                    "rle": group, "runs": [{"size": r["size"], "counts": run_lengths(masks.decode(r["counts"], *r["size"]))}
                                           for r in group], "files": files})
    return out


def write_manifest(path: Path, n: int, cands: list[dict]) -> dict:
    """N lines cycling through the candidates and the mask forms; one in 20 a bad line. Returns the mix."""
    mix = {"rle": 0, "runs": 0, "files": 0, "bad": 0}
    with open(path, "w") as f:
        for i in range(n):
            c = cands[i % len(cands)]
            line = {"id": f"bench-{i}", "image": c["image"], "query": c["query"]}
            if i % 20 == 19:
                kind = (i // 20) % 3
                if kind == 0:
                    line.update(image="/nonexistent/photo.jpg", masks=c["rle"])
                elif kind == 1:
                    line["masks"] = [{"size": [100_000, 100_000], "counts": "0"}]
                text = json.dumps(line) if kind != 2 else json.dumps(line)[:-5]
                mix["bad"] += 1
            else:
                form = ("rle", "files", "rle", "runs")[i % 4]
                line["masks"] = c[form]
                mix[form] += 1
                text = json.dumps(line)
            f.write(text + "\n")
    return mix


def watch(proc: subprocess.Popen, log: Path, n: int, every: float = 1.0) -> dict:
    """Sample the process's RSS (with any children) and scored lines every `every` s until it exits."""
    ps = psutil.Process(proc.pid)
    samples, offset, scored = [], 0, 0
    t0 = time.time()
    while proc.poll() is None:
        try:
            rss = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
        except psutil.Error:
            break
        if log.exists():
            with open(log, "rb") as f:
                f.seek(offset)
                chunk = f.read()
            offset += len(chunk)
            scored += chunk.count(b"\n")
        samples.append({"t": round(time.time() - t0, 2), "rss": rss, "scored": scored})
        time.sleep(every)
    return {"samples": samples, "wall_s": time.time() - t0}


def at_progress(samples: list[dict], n: int, fraction: float) -> dict | None:
    return next((s for s in samples if s["scored"] >= fraction * n), None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=100_000)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threshold", type=float, default=0.5, help="given, as there is no operating point")
    ap.add_argument("--work", type=Path, help="where to build the manifest and the model (default: a temporary folder)")
    ap.add_argument("--out", type=Path, help="the JSON (default: bench/results/gate-memory-DATE-Nk.json)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gate-memory-")) if args.work is None else args.work
    work.mkdir(parents=True, exist_ok=True)
    p = demo_params()
    print(f"gate_memory: building the verifier and a {args.lines}-line manifest in {work}", flush=True)
    model = build_verifier(work / "verifier", p)
    mix = write_manifest(work / "manifest.jsonl", args.lines, candidates(work))
    size = (work / "manifest.jsonl").stat().st_size
    print(f"gate_memory: manifest {size / 1e6:.1f} MB, {mix}", flush=True)
    out_dir = work / "gate"
    shutil.rmtree(out_dir, ignore_errors=True)
    cmd = [sys.executable, "-m", "maskgate", "verify", str(work / "manifest.jsonl"), "--model", str(model),
           "--threshold", str(args.threshold), "--out", str(out_dir), "--device", "cpu", "--quiet",
           "--batch-size", str(args.batch_size), "--params", str(ROOT / "params.yaml")]
    env = {**__import__("os").environ, "PYTHONPATH": str(ROOT)}
    with open(work / "verify.stderr", "w") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
        seen = watch(proc, out_dir / "scores.jsonl", args.lines)
    rc = proc.wait()
    samples = seen["samples"]
    if rc != 0 or not samples:
        print(f"gate_memory: verify exited {rc}: {(work / 'verify.stderr').read_text()[-2000:]}", file=sys.stderr)
        return 1
    summary = json.loads((out_dir / "summary.json").read_text())
    first = next((s for s in samples if s["scored"] > 0), samples[0])
    done = next((s for s in samples if s["scored"] >= args.lines), samples[-1])
    scoring_s = max(done["t"] - first["t"], 1e-9)
    mib = 1024 * 1024
    marks = {f"{int(f * 100)}%": at_progress(samples, args.lines, f) for f in (0.1, 0.5, 0.9)}
    result = {
        "date": dt.date.today().isoformat(), "machine": f"{platform.node()} ({psutil.cpu_count()} CPUs), CPU",
        "lines": args.lines, "manifest_mb": round(size / 1e6, 1), "mix": mix, "batch_size": args.batch_size,
        "threshold": args.threshold, "render_size": p.render.size,
        "wall_s": round(seen["wall_s"], 1), "lines_per_s_scoring": round((done["scored"] - first["scored"]) / scoring_s, 2),
        "lines_per_s_overall": round(args.lines / seen["wall_s"], 2),
        "route_s": round(samples[-1]["t"] - done["t"], 1),
        "peak_rss_mib": round(max(s["rss"] for s in samples) / mib, 1),
        "rss_mib_at": {k: (round(v["rss"] / mib, 1) if v else None) for k, v in marks.items()},
        "summary": {k: summary[k] for k in ("lines", "auto_pass", "needs_review", "bad_lines", "errors")},
        "command": " ".join(cmd),
    }
    out = args.out or ROOT / "bench" / "results" / f"gate-memory-{result['date']}-{args.lines // 1000}k.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**result, "samples": samples[::max(1, len(samples) // 500)]}, indent=2) + "\n")
    print(f"gate_memory: {args.lines} lines in {result['wall_s']} s: {result['lines_per_s_scoring']} lines/s scoring, "
          f"{result['lines_per_s_overall']} lines/s overall (routing at the end {result['route_s']} s)")
    print(f"gate_memory: peak RSS {result['peak_rss_mib']} MiB; RSS at 10/50/90% of the lines "
          + " / ".join(f"{v}" for v in result["rss_mib_at"].values()) + " MiB")
    print(f"gate_memory: {result['summary']}; written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

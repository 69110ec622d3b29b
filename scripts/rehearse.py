#!/usr/bin/env python3
"""Rehearse the run a user makes: `dvc repro` with the committed params.yaml against a local hub, then the gate.

A new user clones the repository and runs `dvc repro`: MaskGroups-HQ comes from the hub, the base is
`Qwen/Qwen3-VL-8B-Instruct`. Here the hub is a local one (tests/hub/server.py) serving stand-ins under
the real ids, so the pipeline's own hub code runs over HTTP: `datasets.load_dataset`, the images zip's
download, `from_pretrained` of processor and base (Unsloth's too, on a GPU), the adapter on top. Only
environment variables point at the local hub (HF_ENDPOINT, a fresh HF_HOME); params.yaml is the
committed one, unless `--set` changes a key (the GPU rehearsal's QLoRA run).

Steps, in WORKDIR: build the hub folder (hub/), serve it, copy the project into a fresh git repository
(repo/), run `dvc repro`, write a manifest of sample photos (each query's right group, and another
query's group of the same image) and run `maskgate verify` on it with the trained model folder. Prints
each step's time and a summary, and writes it to WORKDIR/rehearsal.json; exit status 1 if a step failed.

  python scripts/rehearse.py /tmp/rehearsal                  # CPU: the tiny model as Qwen/Qwen3-VL-8B-Instruct
  python scripts/rehearse.py /tmp/r --random-8b              # GPU: the random 8B under the real id
  python scripts/rehearse.py /tmp/r --random-8b --set train.load_in_4bit=true
                                                             # GPU: QLoRA on its bitsandbytes 4-bit save, served
                                                             # as unsloth/Qwen3-VL-8B-Instruct-unsloth-bnb-4bit
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.hub import repos  # noqa: E402  (the repository root on sys.path first)
from tests.hub.server import serve  # noqa: E402
from tests.project import committed_params, project_copy  # noqa: E402

UNSLOTH_4BIT_ID = "unsloth/Qwen3-VL-8B-Instruct-unsloth-bnb-4bit"
GATE_IMAGES = 8  # sample photos in the gate's manifest




def build_random_8b(out: Path, params: dict, quantized: bool) -> tuple[Path, Path | None]:
    """The random-8b preset in bf16 (drawn on the GPU) and, if `quantized`, its bitsandbytes 4-bit save.

    The 4-bit save is what Unsloth's `-unsloth-bnb-4bit` repositories hold: NF4 weights with double
    quantisation and bf16 compute, the quantisation settings in config.json.
    """
    import torch

    from maskgate import config
    from maskgate.model.qwen import build_tiny, preset_size

    full = out / "random-8b"
    t = time.time()
    build_tiny(full, config.from_dict(params).prompt, seed=0, device="cuda", dtype=torch.bfloat16,
               **preset_size("random-8b"))
    torch.cuda.empty_cache()
    print(f"rehearse: random-8b built in {time.time() - t:.0f} s", flush=True)
    if not quantized:
        return full, None
    from transformers import BitsAndBytesConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor

    t = time.time()
    four_bit = out / "random-8b-bnb-4bit"
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=torch.bfloat16)
    model = Qwen3VLForConditionalGeneration.from_pretrained(full, quantization_config=config, dtype=torch.bfloat16,
                                                            device_map="cuda")
    model.save_pretrained(four_bit)
    Qwen3VLProcessor.from_pretrained(full).save_pretrained(four_bit)
    del model
    torch.cuda.empty_cache()
    print(f"rehearse: its bitsandbytes 4-bit save in {time.time() - t:.0f} s", flush=True)
    return full, four_bit


def set_param(params_file: Path, dotted: str) -> None:
    """`section.key=value` (value parsed as YAML) in params.yaml, as `dvc exp run -S` would set it."""
    import yaml

    key, value = dotted.split("=", 1)
    params = yaml.safe_load(params_file.read_text())
    *path, last = key.split(".")
    node = params
    for part in path:
        node = node[part]
    if last not in node:
        raise SystemExit(f"rehearse: --set {dotted}: params.yaml has no key {key}")
    node[last] = yaml.safe_load(value)
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))


def gate_manifest(samples: Path, out: Path, n_images: int) -> Path:
    """JSONL lines for the gate: per query of the first sample photos, its right group and a wrong one."""
    rows = [json.loads(line) for line in (samples / "maskgroups.jsonl").read_text().splitlines()]
    by_image: dict[str, list[dict]] = {}
    for r in rows:
        by_image.setdefault(r["image"], []).append(r)
    lines = []
    for image in sorted(by_image)[:n_images]:
        queries = by_image[image]
        for i, r in enumerate(queries):
            query = r["conversations"][0]["value"].split("<mask_pool>", 1)[-1].strip()
            right = [r["gt_mask_pool"][j] for j in r["gt_mask_group"][0]]
            lines.append({"id": f"{r['id']}-right", "image": str(samples / "images" / image), "query": query,
                          "masks": right, "expected": "ACCEPT"})
            other = queries[(i + 1) % len(queries)]
            if len(queries) > 1:
                wrong = [other["gt_mask_pool"][j] for j in other["gt_mask_group"][0]]
                lines.append({"id": f"{r['id']}-other", "image": str(samples / "images" / image), "query": query,
                              "masks": wrong, "expected": "REJECT"})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return out


def step(name: str, cmd: list[str], cwd: Path, env: dict, log: Path, times: dict) -> None:
    """Run `cmd`, its output streamed to the terminal and to `log`; SystemExit naming the step if it fails."""
    print(f"rehearse: {name}: {' '.join(cmd)}", flush=True)
    start = time.time()
    with log.open("a") as f:
        p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in p.stdout:
            sys.stdout.write(line)
            f.write(line)
        rc = p.wait()
    times[name] = round(time.time() - start, 1)
    print(f"rehearse: {name}: exit {rc} in {times[name]} s", flush=True)
    if rc:
        raise SystemExit(f"rehearse: {name} failed (exit {rc}); its output is in {log}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workdir", type=Path, help="a new or empty folder (hub/, repo/, hf_home/, logs)")
    ap.add_argument("--random-8b", action="store_true",
                    help="serve the random-8b preset (Qwen3-VL-8B's shape, built here on the GPU) as "
                         f"Qwen/Qwen3-VL-8B-Instruct and its bitsandbytes 4-bit save as {UNSLOTH_4BIT_ID} "
                         "(default: the tiny model as Qwen/Qwen3-VL-8B-Instruct)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="change one params.yaml key in the copy (e.g. train.load_in_4bit=true)")
    args = ap.parse_args()
    import yaml

    work = args.workdir.resolve()
    if work.exists() and any(work.iterdir()):
        raise SystemExit(f"rehearse: {work} is not empty")
    work.mkdir(parents=True, exist_ok=True)
    times: dict = {}
    start = time.time()
    hub_root = work / "hub"
    params = yaml.safe_load(committed_params())
    repos.build_maskgroups(hub_root)
    if args.random_8b:
        full, four_bit = build_random_8b(work / "models", params, quantized="train.load_in_4bit=true" in args.set)
        repos.build_qwen(hub_root, params, full)
        if four_bit:
            repos.build_qwen(hub_root, params, four_bit, UNSLOTH_4BIT_ID)
    else:
        repos.build_qwen(hub_root, params)
    times["build hub"] = round(time.time() - start, 1)
    server = serve(hub_root)
    print(f"rehearse: local hub at {server.url} (built in {times['build hub']} s)", flush=True)
    try:
        repo = project_copy(work / "repo", committed_params())
        for dotted in args.set:
            set_param(repo / "params.yaml", dotted)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
        # the stages import the copy's package, as in a user's clone (a GPU machine's wheel kit stays on the path)
        kept = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != ROOT]
        env.update(HF_ENDPOINT=server.url, HF_HOME=str(work / "hf_home"), HF_HUB_DISABLE_TELEMETRY="1",
                   HF_HUB_DISABLE_XET="1", DVC_NO_ANALYTICS="1", PYTHONUNBUFFERED="1",
                   PYTHONPATH=os.pathsep.join([str(repo), *kept]),
                   PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}")
        log = work / "rehearsal.log"
        step("dvc repro", ["dvc", "repro"], repo, env, log, times)
        manifest = gate_manifest(ROOT / "samples" / "coco-groups", work / "gate_in" / "manifest.jsonl", GATE_IMAGES)
        step("maskgate verify", [sys.executable, "-m", "maskgate", "verify", str(manifest), "--out", str(work / "gate")],
             repo, env, log, times)
    finally:
        server.stop()
    summary = summarize(repo, work, server, times, time.time() - start)
    (work / "rehearsal.json").write_text(json.dumps(summary, indent=1) + "\n")
    print("rehearse: summary " + json.dumps(summary))
    return 0


def request_kind(path: str) -> str:
    """/api/models/... -> "api/models"; /datasets/o/n/resolve/... -> "datasets resolve"; /o/n/resolve/... -> "models resolve"."""
    parts = path.strip("/").split("/")
    if parts[0] == "api":
        return "/".join(parts[:2])
    return f"{'datasets' if parts[0] == 'datasets' else 'models'} {'resolve' if 'resolve' in parts else 'other'}"


def summarize(repo: Path, work: Path, server, times: dict, wall: float) -> dict:
    """What the run used and gave: the data and base commits, the metrics, the gate's routing, the hub traffic."""
    read = lambda p: json.loads(p.read_text())  # noqa: E731
    prepare, train = read(repo / "reports/prepare.json"), read(repo / "reports/train_summary.json")
    metrics, verifier = read(repo / "reports/metrics_breakdown.json"), read(repo / "models/verifier/verifier.json")
    gate = read(work / "gate" / "summary.json")
    served = Counter(f"{r['method']} {request_kind(r['path'])}" for r in server.requests)
    return {
        "data": {k: prepare["source"].get(k) for k in ("repo", "revision", "commit", "hub_splits")},
        "kept": prepare["kept"],
        "base": verifier["base"],
        "backend": train["backend"],
        "train": {k: train.get(k) for k in ("global_step", "train_loss", "eval_auroc", "examples_per_s", "peak_gpu_gib")},
        "val": {k: metrics.get(k) for k in ("auroc", "accuracy", "ece")},
        "test": {k: metrics.get("test", {}).get(k) for k in ("n", "auroc", "at_operating_point")},
        "gate": {k: gate[k] for k in ("lines", "auto_pass", "needs_review", "bad_lines", "threshold")},
        "hub_requests": dict(sorted(served.items())),
        "hub_unhandled": [f"{r['method']} {r['path']}" for r in server.unhandled()],
        "times_s": times,
        "wall_s": round(wall, 1),
    }


if __name__ == "__main__":
    sys.exit(main())

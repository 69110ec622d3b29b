"""GPU proof: train + evaluate through the project's own stage scripts on a GPU, both backends.

Runs, in order, each with its own params file and output folder under --work:
  tiny / hf, tiny / unsloth (16-bit LoRA)                      demo data at 96 px, one epoch
  random-8b / hf, random-8b / unsloth 16-bit, random-8b / unsloth QLoRA    demo data at 672 px, a few steps
and prints one line per run (steps, examples/s, peak GPU memory, wall time, val AUROC). Meant for the
lent GPU machine: `. scripts/gpu_env.sh && python3 bench/gpu_proof.py --runs tiny-hf,tiny-unsloth`.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from maskgate import config  # noqa: E402  (pydantic and yaml only)

RUNS = {
    # name: (preset, backend, load_in_4bit, data)
    "tiny-hf": ("tiny", "hf", False, "small"),
    "tiny-unsloth": ("tiny", "unsloth", False, "small"),
    "8b-hf": ("random-8b", "hf", False, "full"),
    "8b-unsloth": ("random-8b", "unsloth", False, "full"),
    "8b-unsloth-4bit": ("random-8b", "unsloth", True, "full"),
}
DATA = {"small": {"demo_images": 80, "size": 96}, "full": {"demo_images": 16, "size": 672}}


def run(cmd: list[str], log: Path) -> float:
    t = time.time()
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        p = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if p.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {p.returncode}); see {log}")
    return time.time() - t


def params_for(base: dict, preset: str, backend: str, four_bit: bool, data: str) -> dict:
    p = json.loads(json.dumps(base))
    p["data"].update(source="demo", demo_images=DATA[data]["demo_images"])
    p["render"].update(size=DATA[data]["size"], workers=8)
    p["model"]["preset"] = preset
    p["train"].update(backend=backend, load_in_4bit=four_bit, batch_size=16, micro_batch_size=8,
                      save_steps=1000, eval_steps=1000, eval_examples=32, logging_steps=1)
    p["evaluate"]["batch_size"] = 16
    config.from_dict(p, f"{preset}/{backend} params")  # the stages would refuse it: say so before they start
    return p


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default=",".join(RUNS), help="comma-separated, from: " + ", ".join(RUNS))
    ap.add_argument("--work", type=Path, default=Path("/tmp/gpu_proof"))
    ap.add_argument("--out", type=Path, default=Path("gpu_proof_out"), help="logs and summaries")
    args = ap.parse_args()
    base = config.read_yaml("params.yaml")
    args.out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    for name in args.runs.split(","):
        preset, backend, four_bit, data = RUNS[name]
        w = args.work / name
        d = args.work / f"data-{data}"
        w.mkdir(parents=True, exist_ok=True)
        pf = w / "params.yaml"
        log = args.out / f"{name}.log"
        try:
            pf.write_text(yaml.safe_dump(params_for(base, preset, backend, four_bit, data)))
            if not (d / "rendered").exists():
                run([py, "stages/prepare.py", "--params", str(pf), "--out", str(d / "prepared"), "--report", str(d / "prepare.json")], log)
                run([py, "stages/negatives.py", "--params", str(pf), "--prepared", str(d / "prepared"), "--out", str(d / "negatives"), "--report", str(d / "negatives.json")], log)
                run([py, "stages/render.py", "--params", str(pf), "--prepared", str(d / "prepared"), "--negatives", str(d / "negatives"), "--out", str(d / "rendered"), "--report", str(d / "render.json")], log)
            t_train = run([py, "stages/train.py", "--params", str(pf), "--rendered", str(d / "rendered"), "--out", str(w / "verifier"),
                           "--checkpoints", str(w / "checkpoints"), "--live", str(w / "live"), "--report", str(args.out / f"{name}-train.json"),
                           "--summary", str(args.out / f"{name}-summary.json")], log)
            t_eval = run([py, "stages/evaluate.py", "--params", str(pf), "--rendered", str(d / "rendered"), "--model", str(w / "verifier"),
                          "--metrics", str(args.out / f"{name}-metrics.json"), "--breakdown", str(args.out / f"{name}-breakdown.json"),
                          "--plots", str(w / "plots"), "--operating-point", str(w / "op.json"), "--scores", str(w / "scores")], log)
        except (RuntimeError, config.ParamsError) as e:
            print(f"{name}: FAILED: {e}", flush=True)
            continue
        s = json.loads((args.out / f"{name}-summary.json").read_text())  # train.json holds the headline only
        m = json.loads((args.out / f"{name}-metrics.json").read_text())  # the headline: auroc is there
        print(f"{name}: {s['global_step']} steps x {s['batch']['effective']} examples, {s['examples_per_s']} examples/s "
              f"(train loop incl. warm-up), peak {s['peak_gpu_gib']} GiB, params {s['params']['total']:.3g}; "
              f"train stage {t_train:.0f} s, evaluate stage {t_eval:.0f} s, val AUROC {m['auroc']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

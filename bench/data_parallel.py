"""Data-parallel training on one machine: 1 GPU against 2, for correctness (tiny) and for speed (random-8b).

Runs, in this order, each as its own process group with a time limit (a failure or a time-out is printed
and the rest still runs; a run that cannot start before --budget-s is over is skipped and said so):

  tiny-hf-1, tiny-hf-2          the train stage itself (`train.gpus` 1, then 2: it relaunches itself under
                                torchrun), tiny preset, demo data at 96 px, effective batch 16 (micro 4:
                                accumulation 4 on 1 GPU, 2 on 2), no dropout. Prints both loss curves step
                                by step and the largest difference: the same examples make each optimizer
                                step on any GPU count, so only bf16 rounding may tell them apart.
  8b-hf-1, 8b-hf-2              random-8b (Qwen3-VL-8B's architecture, random bf16 weights, hf backend,
                                LoRA r=16, gradient checkpointing), demo data at 672 px, effective batch 32
                                (micro 8), plain python on 1 GPU and torchrun on 2. Rank 0 times each
                                optimizer step (after torch.cuda.synchronize); examples/s counts the steps
                                after --warmup and before the last one (it may be short), and the ratio
                                2-GPU / 1-GPU is the scaling (2.0 = perfect).
  tiny-unsloth-2, tiny-unsloth-1  the same as tiny-hf-* on the unsloth backend (16-bit LoRA): does
                                Unsloth's data-parallel mode run Qwen3-VL? Unsloth compiles first (minutes),
                                hence last.

On the lent 2-GPU machine, from the repository root with `.whl` carried:

    . scripts/gpu_env.sh && python3 bench/data_parallel.py --out dp_out

Expected time: about 3 minutes for the four hf runs (the random-8b base, 17 GB, is drawn and written once
and reused by the 2-GPU run), then the unsloth runs while the budget lasts. Writes `--out/summary.json`,
one `<run>.json` and `<run>.log` per run.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from maskgate import config  # noqa: E402  (pydantic and yaml only: nothing that imports transformers)

RUNS = {
    # name: (preset, backend, gpus, how): how = "stage" (stages/train.py, train.gpus) or "timed" (this file's
    # worker: maskgate.model.train.train with a step timer, under plain python or torchrun)
    "tiny-hf-1": ("tiny", "hf", 1, "stage"),
    "tiny-hf-2": ("tiny", "hf", 2, "stage"),
    "8b-hf-1": ("random-8b", "hf", 1, "timed"),
    "8b-hf-2": ("random-8b", "hf", 2, "timed"),
    "tiny-unsloth-2": ("tiny", "unsloth", 2, "stage"),
    "tiny-unsloth-1": ("tiny", "unsloth", 1, "stage"),
}
LIMIT_S = {"tiny": 180, "random-8b": 300}  # per run, before the overall budget cuts it shorter
DATA = {"tiny": {"demo_images": 40, "size": 96}, "random-8b": {"demo_images": 24, "size": 672}}
BATCH = {"tiny": (16, 4), "random-8b": (32, 8)}  # (effective batch, micro-batch)


def params_for(base: dict, preset: str, backend: str, gpus: int) -> dict:
    """params.yaml's mapping with the run's settings, checked as the stage will check it (config.ParamsError)."""
    p = json.loads(json.dumps(base))
    p["data"].update(source="demo", demo_images=DATA[preset]["demo_images"])
    p["render"].update(size=DATA[preset]["size"], workers=8)
    p["model"]["preset"] = preset
    batch, micro = BATCH[preset]
    p["train"].update(backend=backend, gpus=gpus, load_in_4bit=False, batch_size=batch, micro_batch_size=micro,
                      save_steps=1000, eval_steps=0, eval_examples=0, logging_steps=1)
    if preset == "tiny":
        p["train"]["lora"]["dropout"] = 0.0  # each rank draws its own dropout masks: noise, not a difference
    config.from_dict(p, f"{preset}/{backend}/{gpus} GPU params")
    return p


def child_env(gpus: int) -> dict:
    return dict(os.environ, CUDA_VISIBLE_DEVICES=",".join(str(i) for i in range(gpus)),
                PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))


def run(cmd: list[str], log: Path, env: dict, limit_s: float) -> tuple[int | None, float]:
    """(exit code or None on time-out, seconds). Own process group, so a time-out kills torchrun's workers too."""
    t = time.time()
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
        try:
            code = p.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            code = None
    return code, time.time() - t


def make_data(preset: str, base: dict, work: Path, log: Path, limit_s: float) -> Path:
    """Demo data for the preset through the project's prepare, negatives and render stages (once)."""
    d = work / f"data-{preset}"
    if (d / "rendered").exists():
        return d / "rendered"
    pf = work / f"data-{preset}.yaml"
    pf.write_text(yaml.safe_dump(params_for(base, preset, "hf", 1)))
    py, env = sys.executable, child_env(0)
    for cmd in (
        [py, "stages/prepare.py", "--params", str(pf), "--out", str(d / "prepared"), "--report", str(d / "prepare.json")],
        [py, "stages/negatives.py", "--params", str(pf), "--prepared", str(d / "prepared"), "--out", str(d / "negatives"),
         "--report", str(d / "negatives.json")],
        [py, "stages/render.py", "--params", str(pf), "--prepared", str(d / "prepared"), "--negatives", str(d / "negatives"),
         "--out", str(d / "rendered"), "--report", str(d / "render.json")],
    ):
        code, _ = run(cmd, log, env, limit_s)
        if code != 0:
            raise RuntimeError(f"{cmd[1]} failed (exit {code}); see {log}")
    return d / "rendered"


def loss_curve(live: Path) -> dict[int, float]:
    rows = (live / "plots/metrics/train/loss.tsv").read_text().split()[2:]
    return {int(s): float(v) for s, v in zip(rows[::2], rows[1::2])}


def steady_rate(times: list[list[float]], batch: int, warmup: int) -> dict:
    """examples/s over the optimizer steps after `warmup` and before the last (which may be short)."""
    steps = [(int(s), t) for s, t in times]
    timed = [x for x in steps if warmup <= x[0] <= steps[-1][0] - 1]
    if len(timed) < 2:
        return {"examples_per_s": None, "timed_steps": 0}
    n = timed[-1][0] - timed[0][0]
    seconds = timed[-1][1] - timed[0][1]
    return {"examples_per_s": round(n * batch / seconds, 2), "timed_steps": n, "seconds": round(seconds, 2),
            "s_per_step": round(seconds / n, 3)}


# ----------------------------------------------------------------------------------------------
# worker: one training process (rank), started by plain python or by torchrun


def worker(params_file: Path, rendered: Path, folder: Path, times_file: Path) -> int:
    from maskgate.model import launch
    from maskgate.model.backend import resolve_backend

    p = config.load(params_file)
    backend = resolve_backend(p.train, p.model.preset)  # before transformers: unsloth patches it when picked
    import torch
    from transformers import TrainerCallback

    from maskgate.model import train as training

    times: list[list[float]] = []

    class StepTimer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                if torch.cuda.is_available():  # the step's kernels done, not just queued
                    torch.cuda.synchronize()
                times.append([state.global_step, time.perf_counter()])

    summary = training.train(training.TrainJob.of(p), rendered, folder / "model", folder / "checkpoints",
                             folder / "live", backend=backend, callbacks=[StepTimer()])
    if launch.is_main_process():
        times_file.write_text(json.dumps({"step_end_s": times, "summary": summary}, indent=1) + "\n")
    return 0


# ----------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default=",".join(RUNS), help="comma-separated, from: " + ", ".join(RUNS))
    ap.add_argument("--work", type=Path, default=Path("/tmp/data_parallel"))
    ap.add_argument("--out", type=Path, default=Path("data_parallel_out"), help="logs and results")
    ap.add_argument("--budget-s", type=float, default=500, help="no run starts or goes on past this (from the start)")
    ap.add_argument("--warmup", type=int, default=2, help="random-8b: optimizer steps left out of the timing")
    ap.add_argument("--worker", nargs=4, metavar=("PARAMS", "RENDERED", "FOLDER", "TIMES"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(*map(Path, args.worker))

    started = time.time()
    left = lambda: args.budget_s - (time.time() - started)  # noqa: E731
    base = config.read_yaml(ROOT / "params.yaml")
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    results: dict[str, dict] = {}
    for name in args.runs.split(","):
        preset, backend, gpus, how = RUNS[name]
        log, res = args.out / f"{name}.log", {"preset": preset, "backend": backend, "gpus": gpus}
        results[name] = res
        if left() < 30:
            res["status"] = "skipped: budget spent"
            print(f"{name}: skipped (budget spent)", flush=True)
            continue
        w = args.work / name
        w.mkdir(parents=True, exist_ok=True)
        pf = w / "params.yaml"
        try:
            pf.write_text(yaml.safe_dump(params_for(base, preset, backend, gpus)))
        except config.ParamsError as e:
            res["status"] = f"failed: {e}"
            print(f"{name}: FAILED: {e}", flush=True)
            continue
        # timed runs of a preset share one model folder, so the 17 GB random base is built once (its stamp matches)
        folder = args.work / f"{preset}-timed" if how == "timed" else w
        for stale in ("checkpoints", "live"):
            subprocess.run(["rm", "-rf", str(folder / stale)], check=True)
        try:
            rendered = make_data(preset, base, args.work, log, min(120, left()))
        except (RuntimeError, config.ParamsError) as e:
            res["status"] = f"failed: {e}"
            print(f"{name}: FAILED: {e}", flush=True)
            continue
        times_file = args.out / f"{name}-times.json"
        if how == "stage":  # the stage itself: train.gpus=2 relaunches it under torchrun
            cmd = [py, "stages/train.py", "--params", str(pf), "--rendered", str(rendered), "--out", str(folder / "model"),
                   "--checkpoints", str(folder / "checkpoints"), "--live", str(folder / "live"),
                   "--report", str(args.out / f"{name}-train.json"),
                   "--summary", str(args.out / f"{name}-summary.json")]
        else:
            launcher = [py] if gpus == 1 else [py, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}"]
            cmd = [*launcher, str(Path(__file__).resolve()), "--worker", str(pf), str(rendered), str(folder), str(times_file)]
        code, wall = run(cmd, log, child_env(gpus), min(LIMIT_S[preset], left()))
        res["wall_s"] = round(wall, 1)
        if code != 0:
            res["status"] = "timed out" if code is None else f"failed (exit {code})"
            print(f"{name}: {res['status']} after {wall:.0f} s; see {log}", flush=True)
            continue
        res["status"] = "ok"
        if how == "stage":
            s = json.loads((args.out / f"{name}-summary.json").read_text())  # train.json holds the headline only
            res["loss"] = loss_curve(folder / "live")
        else:
            t = json.loads(times_file.read_text())
            s = t["summary"]
            res.update(steady_rate(t["step_end_s"], s["batch"]["effective"], args.warmup))
        res.update(steps=s["global_step"], batch=s["batch"], train_examples=s["examples"]["train"], peak_gpu_gib=s["peak_gpu_gib"],
                   loop_examples_per_s=s["examples_per_s"], train_loss=s["train_loss"])
        print(f"{name}: {s['global_step']} steps x {s['batch']['effective']} (micro {s['batch']['micro']} x accumulation "
              f"{s['batch']['accumulation']} x {s['batch']['world']} GPU), train loss {s['train_loss']:.4f}, "
              f"peak {s['peak_gpu_gib']} GiB (rank 0), process {wall:.0f} s"
              + (f", {res['examples_per_s']} examples/s over {res['timed_steps']} steps after warm-up"
                 if how == "timed" else f", {s['examples_per_s']} examples/s (train loop incl. warm-up)"), flush=True)

    report = {}
    for backend in ("hf", "unsloth"):
        one, two = results.get(f"tiny-{backend}-1", {}), results.get(f"tiny-{backend}-2", {})
        if one.get("status") == two.get("status") == "ok":
            a, b = one["loss"], two["loss"]
            print(f"\ntiny / {backend}: loss per optimizer step, 1 GPU vs 2 GPUs")
            print("step  1 GPU     2 GPUs    diff")
            for step in sorted(set(a) | set(b)):
                x, y = a.get(step), b.get(step)
                diff = f"{y - x:+.5f}" if x is not None and y is not None else "missing"
                cells = ["-" if v is None else f"{v:.5f}" for v in (x, y)]
                print(f"{step:4d}  {cells[0]:8}  {cells[1]:8}  {diff}")
            # A last step short of a full batch differs by design: 1 GPU sees the n % batch examples left, 2 GPUs
            # pad their last micro-batches with the epoch's first examples (accelerate's even_batches).
            full = one["train_examples"] // one["batch"]["effective"]
            common = sorted(set(a) & set(b))
            compared = [s for s in common if s <= full]
            worst = max(compared, key=lambda s: abs(a[s] - b[s]))
            report[f"tiny-{backend}"] = {
                "steps_1gpu": len(a), "steps_2gpu": len(b), "full_steps": full, "max_abs_diff": abs(a[worst] - b[worst]),
                "at_step": worst, "final_1gpu": a[common[-1]], "final_2gpu": b[common[-1]],
                "last_step_partial": common[-1] > full, "last_step_diff": b[common[-1]] - a[common[-1]],
            }
            print(f"tiny / {backend}: {len(a)} vs {len(b)} steps; largest |difference| {abs(a[worst] - b[worst]):.5f} "
                  f"(step {worst}) over the {len(compared)} steps of a full batch"
                  + (f"; last step {common[-1]} is short ({one['train_examples'] % one['batch']['effective']} examples "
                     f"on 1 GPU, padded on 2): {b[common[-1]] - a[common[-1]]:+.5f}" if common[-1] > full else ""))
    one, two = results.get("8b-hf-1", {}), results.get("8b-hf-2", {})
    if one.get("examples_per_s") and two.get("examples_per_s"):
        ratio = two["examples_per_s"] / one["examples_per_s"]
        report["8b-hf"] = {"examples_per_s_1gpu": one["examples_per_s"], "examples_per_s_2gpu": two["examples_per_s"],
                           "scaling": round(ratio, 3)}
        print(f"\nrandom-8b / hf, 672 px, effective batch 32: {one['examples_per_s']} examples/s on 1 GPU, "
              f"{two['examples_per_s']} on 2 GPUs: {ratio:.2f}x")
    (args.out / "summary.json").write_text(json.dumps({"runs": results, "compare": report}, indent=1) + "\n")
    print(f"\nall in {time.time() - started:.0f} s; {args.out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

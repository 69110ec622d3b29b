"""Training and scoring throughput on one GPU: the references and the project's candidate settings.

One command on the GPU machine (after `. scripts/gpu_env.sh`):

    python3 bench/throughput.py --out bench/results/DATE-h100-throughput [--configs a,b,...] [--steps 5]

(`--configs table`: the issue's table and the project's default rows. Micro-batch `auto` remembers its sizes in
bench/cache/batch_sizes.json: copy it back from the GPU machine and commit it, and the next run on that card skips
the search.)

It makes its own data (demo scenes rendered at --size px through the project's prepare, negatives
and render code; every query padded with filler words so each example is exactly --tokens tokens,
617 by default: 441 image + 176 text), builds the random-8b preset (Qwen3-VL-8B's
shape, random bf16 weights: speed and memory do not depend on weight values) once, measures the bf16
matrix-multiply rate, then runs each configuration in its own subprocess with a timeout: a failure is
printed with the tail of its log and the rest still run. Training configurations go through
`maskgate.model.train.train` (TRL SFTTrainer, the project's collator) with their `train` settings;
scoring configurations through `maskgate.model.scoring.score` on the loaded model with their
`evaluate` settings (`maskgate.model.speedups.for_scoring`). Every setting a configuration changes
is a params.yaml key (the settings are params.yaml with the configuration's keys changed, checked by
`maskgate.config.from_dict`), so the fastest one can become the default.

Printed and written (one JSON per configuration in --out, and all of them in --out/results.jsonl):
examples/s and tokens/s over the measured steps only (warm-up steps excluded: Unsloth compiles each
decoder block in its first step), tokens per example (real; padded is the same here since every example
has the same length, the ~1-2% padding of real data is not measured), peak GPU memory
(torch.cuda.max_memory_allocated over the whole subprocess), MFU and HFU. MFU = model FLOPs per example
(maskgate/model/flops.py: from the config's shape, counted the same for every configuration, so MFU ratios are
throughput ratios) x examples/s / the bf16 torch.mm rate measured at the start of the same run. HFU adds
the decoder forward that gradient checkpointing recomputes. Training records the loss of every step;
scoring records P(ACCEPT) of the measured examples; the table shows |loss - the hf reference's| and
max |dP| against the plain scoring reference over the examples both scored.

Configurations (see CONFIGS; names starting `ref-` are the references of the issue):
  ref-hf-gc-b16      transformers + peft LoRA r=16, gradient checkpointing, micro-batch 16
  ref-unsloth16-b32  Unsloth 16-bit LoRA, batch 32          ref-unsloth4-b32  Unsloth QLoRA 4-bit, batch 32
  ref-unsloth4-d0-b32  the QLoRA recipe with LoRA dropout 0 (Unsloth's own default), to compare -d0- runs with
  ref-score-b32      today's score(): base + unmerged adapter, bf16, batch 32, batches prepared in turn
  hf-*               the project's hf path with levers: w = dataloader workers, nogc = no checkpointing,
                     b = micro-batch
  score-*            scoring with levers: w = workers, merge = evaluate.merge_adapter, compile, b = batch,
                     bv / cv = batched_vision / compile_vision, pf = prefetch, ov = overlap (ov0: overlap
                     without scoring.VisionTables, as before them); unsloth16-*-d0: train.lora.dropout 0;
                     unsloth16-*-ah0: the model makes its own position ids and vision tables (before scoring.Ahead);
                     pm = evaluate.patch_matmul, ll = evaluate.last_layer_at_answer (train.patch_matmul,
                     train.last_layer_at_answer in a training row); -lib-: the library's loss, every position's
                     logits (before answer_loss)
  table              the issue's table and the project's defaults in one run: `--configs table` (TABLE below)

Predicted gains (before measuring; 617 tokens, H100; the training floor is about 40 examples/s and the
scoring floor 73 by flops.py's count at 790 TFLOP/s):
  * batches prepared in worker processes (train.dataloader_workers, evaluate.workers): the processor
    spends ~30-50 ms per 672 px image on one CPU core, in series with the GPU today. Scoring at 24
    examples/s spends 42 ms per example in all, so most of it may be CPU: predicted 1.3-2x for scoring,
    1.1-1.3x for training (a training step is 2-3x the GPU work of a scoring pass).
  * no gradient checkpointing (train.gradient_checkpointing: false): the recompute is a third of the
    decoder's work (forward + input-gradient backward + forward again): up to 1.3x, less if the micro-batch
    that fits (~8 at 617 tokens) is too small to fill the GPU.
  * logits only at the answer position: already done on CUDA by TRL 1.15's fused LM head (sft_trainer.py
    calls add_fused_lm_head; it projects only positions whose label is not -100): predicted 0 more.
  * no padding waste: examples differ by a few text tokens (~1-2% padding): at most 1.02x; not a setting.
  * merged adapter for scoring (evaluate.merge_adapter): removes 7 LoRA branches per layer, each a memory
    pass over the activations: 1.05-1.1x.
  * torch.compile of the decoder layers for scoring (evaluate.compile): fuses norms, rotary and SiLU;
    1.05-1.15x on the GPU part, compile time in warm-up (minutes possible: risky inside 10 minutes).
  * larger batch (64 vs 32): 1.0-1.05x, the GPU is already full at 32 x 617 tokens.
  * reusing the shared prompt prefix: the image comes after a ~15-token system turn, so the shared
    prefix is ~2% of the sequence: not worth the complexity; not tried.
Targets: the best hf training config >= 1.3x ref-unsloth4-b32, the best scoring config >= 2x ref-score-b32.

CPU check: `python bench/throughput.py --smoke --out DIR` runs the tiny preset at 64 px, 2 steps,
batch 2, the configurations that need no CUDA (Unsloth ones are reported as skipped).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
STARTED = time.time()  # a worker's phases are seconds since its process started (where a 10-minute call goes)

from maskgate import config  # noqa: E402  (pydantic and yaml only: nothing that imports transformers)


def train_cfg(backend="hf", mb=16, gc=True, workers=0, four_bit=False, bv=False, lora=None, ahead=True,
              head="answer", env=None, ll=False, pm=False) -> dict:
    """A training configuration: its keys of params.yaml's `train` section (mb "auto": train.micro_batch_size auto),
    lora: keys of `train.lora` changed. Not params keys, to measure the project's path against what came before in
    one run: ahead=False, the model makes its own position ids and vision tables (before scoring.Ahead);
    head="library", the library's loss (Unsloth's or TRL's) instead of maskgate.model.answer_loss; env, variables
    the configuration's process starts with (UNSLOTH_RETURN_LOGITS=1: what maskgate set before answer_loss)."""
    return {"kind": "train", "backend": backend, "micro_batch_size": mb, "lora": lora or {}, "ahead": ahead,
            "head": head, "env": env or {}, "train": {
                "backend": backend, "gradient_checkpointing": gc, "dataloader_workers": workers,
                "load_in_4bit": four_bit, "batched_vision": bv, "patch_matmul": pm, "last_layer_at_answer": ll}}


def score_cfg(batch=32, workers=0, merge=False, compile_=False, bv=False, prefetch=False, cv=False, overlap=False,
              vision_tables=True, pm=False, ll=False) -> dict:
    """A scoring configuration: its keys of params.yaml's `evaluate` section (speedups.Scoring's, less the batch).

    vision_tables=False (not a params key): overlap as it was before scoring.VisionTables, position ids only, to
    measure the tables against it in one run."""
    return {"kind": "score", "batch_size": batch, "vision_tables": vision_tables, "evaluate": {
        "workers": workers, "prefetch": prefetch, "merge_adapter": merge, "compile": compile_, "batched_vision": bv,
        "compile_vision": cv, "overlap": overlap, "patch_matmul": pm, "last_layer_at_answer": ll}}


AUTO_EFFECTIVE = 64  # train.batch_size of the micro-batch-auto configurations (accumulation makes it up)
# every scoring configuration scores the same examples, whatever its batch. Four batches of 64 warm up: with two,
# merge + compile's first measured batch still took 3.7 s against 2.0 after it (2026-12-06, H100)
SCORE_EXAMPLES, SCORE_WARMUP = 512, 256

LOGITS = {"UNSLOTH_RETURN_LOGITS": "1"}  # every position's logits on the Unsloth path, as the issue's rows measured
CONFIGS = {
    "ref-hf-gc-b16": train_cfg("hf", 16, gc=True, head="library"),
    "hf-gc-b16": train_cfg("hf", 16, gc=True),
    "ref-unsloth16-b32": train_cfg("unsloth", 32, four_bit=False, head="library"),
    "ref-unsloth4-b32": train_cfg("unsloth", 32, four_bit=True, head="library"),
    "ref-unsloth4-logits-b32": train_cfg("unsloth", 32, four_bit=True, head="library", env=LOGITS),
    "ref-unsloth4-d0-b32": train_cfg("unsloth", 32, four_bit=True, lora={"dropout": 0.0}, head="library"),
    "unsloth16-nogc-b8": train_cfg("unsloth", 8, gc=False, four_bit=False, head="library", env=LOGITS),
    "unsloth16-nogc-b16": train_cfg("unsloth", 16, gc=False, four_bit=False, head="library", env=LOGITS),
    "unsloth4-nogc-b16": train_cfg("unsloth", 16, gc=False, four_bit=True),
    "unsloth16-nogc-bv-b16": train_cfg("unsloth", 16, gc=False, bv=True),
    "unsloth16-nogc-bv-w4-b16": train_cfg("unsloth", 16, gc=False, workers=4, bv=True),
    "unsloth16-nogc-bv-w4-lib-b16": train_cfg("unsloth", 16, gc=False, workers=4, bv=True, head="library", env=LOGITS),
    "unsloth16-nogc-bv-w4-auto": train_cfg("unsloth", "auto", gc=False, workers=4, bv=True),
    "unsloth16-nogc-bv-w4-ah0-b16": train_cfg("unsloth", 16, gc=False, workers=4, bv=True, ahead=False),
    "unsloth16-nogc-bv-w4-d0-b16": train_cfg("unsloth", 16, gc=False, workers=4, bv=True, lora={"dropout": 0.0}),
    "unsloth16-nogc-bv-w4-ll-b16": train_cfg("unsloth", 16, gc=False, workers=4, bv=True, ll=True),
    "unsloth16-nogc-bv-w4-ll-auto": train_cfg("unsloth", "auto", gc=False, workers=4, bv=True, ll=True),
    "unsloth16-nogc-bv-w4-pm-ll-auto": train_cfg("unsloth", "auto", gc=False, workers=4, bv=True, ll=True, pm=True),
    "unsloth16-nogc-bv-w4-d0-ll-auto": train_cfg("unsloth", "auto", gc=False, workers=4, bv=True, ll=True,
                                                 lora={"dropout": 0.0}),
    "unsloth16-nogc-bv-w4-ll-b8": train_cfg("unsloth", 8, gc=False, workers=4, bv=True, ll=True),
    "unsloth16-nogc-bv-w4-b8": train_cfg("unsloth", 8, gc=False, workers=4, bv=True),
    "unsloth16-nogc-bv-w4-lib-b8": train_cfg("unsloth", 8, gc=False, workers=4, bv=True, head="library", env=LOGITS),
    "unsloth16-nogc-bv-w4-d0-ll-b16": train_cfg("unsloth", 16, gc=False, workers=4, bv=True, ll=True,
                                                lora={"dropout": 0.0}),
    "ref-score-b32": score_cfg(32),
    "hf-w4-gc-b32": train_cfg("hf", 32, gc=True, workers=4),
    "hf-w4-nogc-b8": train_cfg("hf", 8, gc=False, workers=4),
    "hf-nogc-bv-auto": train_cfg("hf", "auto", gc=False, bv=True),
    "score-w4-b32": score_cfg(32, workers=4),
    "score-w4-merge-b32": score_cfg(32, workers=4, merge=True),
    "score-compile-b64": score_cfg(64, compile_=True),
    "score-merge-compile-b64": score_cfg(64, merge=True, compile_=True),
    "score-w6-merge-compile-b64": score_cfg(64, workers=6, merge=True, compile_=True),
    "score-merge-compile-bv-b64": score_cfg(64, merge=True, compile_=True, bv=True),
    "score-merge-compile-bv-pf-b64": score_cfg(64, merge=True, compile_=True, bv=True, prefetch=True),
    "score-merge-compile-bv-pf-auto": score_cfg("auto", merge=True, compile_=True, bv=True, prefetch=True),
    "score-merge-compile-bv-cv-pf-b64": score_cfg(64, merge=True, compile_=True, bv=True, prefetch=True, cv=True),
    "score-merge-compile-bv-cv-pf-auto": score_cfg("auto", merge=True, compile_=True, bv=True, prefetch=True, cv=True),
    "score-merge-compile-bv-cv-pf-ov0-b64": score_cfg(64, merge=True, compile_=True, bv=True, prefetch=True, cv=True,
                                                      overlap=True, vision_tables=False),
    "score-merge-compile-bv-cv-pf-ov-b64": score_cfg(64, merge=True, compile_=True, bv=True, prefetch=True, cv=True,
                                                     overlap=True),
    "score-merge-compile-bv-cv-w4-ov-b64": score_cfg(64, workers=4, merge=True, compile_=True, bv=True, cv=True,
                                                     overlap=True),
    "score-merge-compile-bv-cv-pf-ov-pm-b64": score_cfg(64, merge=True, compile_=True, bv=True, prefetch=True, cv=True,
                                                        overlap=True, pm=True),
    "score-merge-compile-bv-cv-pf-ov-ll-b64": score_cfg(64, merge=True, compile_=True, bv=True, prefetch=True, cv=True,
                                                        overlap=True, ll=True),
    "score-merge-compile-bv-cv-pf-ov-pm-ll-b64": score_cfg(64, merge=True, compile_=True, bv=True, prefetch=True,
                                                           cv=True, overlap=True, pm=True, ll=True),
}
# The issue's table (its five rows: the references and the defaults of the time) and the project's default rows
# (params.yaml's settings, micro-batch auto: 16 on an H200, 8 on an H100), in the order that keeps the references
# and defaults first if a 10-minute call runs short. The issue measured its Unsloth rows with every position's
# logits (maskgate set UNSLOTH_RETURN_LOGITS=1 then): its reference is rerun so, as `ref-unsloth4-logits-b32`;
# `ref-unsloth4-b32` is the recipe as Unsloth ships it.
DEFAULT_TRAIN, DEFAULT_SCORE = "unsloth16-nogc-bv-w4-pm-ll-auto", "score-merge-compile-bv-cv-pf-ov-pm-ll-b64"
TABLE = ["ref-unsloth4-b32", DEFAULT_TRAIN, "ref-unsloth4-logits-b32", "ref-score-b32", DEFAULT_SCORE,
         "score-merge-compile-b64", "unsloth16-nogc-b16", "unsloth16-nogc-b8"]
SMOKE_CONFIGS = ["ref-hf-gc-b16", "ref-unsloth4-b32", "ref-score-b32", "hf-w4-nogc-b8", "score-w4-merge-b32",
                 "score-w6-merge-compile-b64"]
REF_TRAIN, REF_LOSS, REF_SCORE = "ref-unsloth4-b32", "ref-hf-gc-b16", "ref-score-b32"


# ----------------------------------------------------------------------------------------------
# settings


def base_params(args) -> dict:
    """params.yaml (as a mapping) with the bench's data, model and size settings."""
    p = config.read_yaml(ROOT / "params.yaml")
    p["data"].update(source="demo", demo_images=args.demo_images)
    p["render"].update(size=args.size, workers=max(1, min(8, os.cpu_count() or 1)), shard_size=100000)
    p["model"]["preset"] = args.preset
    return p


def settings(params: dict, where: str = "bench params") -> config.Params:
    """A params mapping (the bench's changed copy of params.yaml) as the typed settings a stage builds."""
    return config.from_dict({k: v for k, v in params.items() if k != "bench"}, where)


def config_params(base: dict, cfg: dict, warmup: int, steps: int) -> dict:
    """params for one training configuration: one micro-batch per optimizer step, no eval, no checkpoints."""
    p = json.loads(json.dumps(base))
    mb = cfg["micro_batch_size"]
    p["train"].update(cfg["train"])
    p["train"]["lora"].update(cfg.get("lora", {}))
    p["train"].update(batch_size=AUTO_EFFECTIVE if mb == "auto" else mb, micro_batch_size=mb, epochs=1,
                      eval_examples=0, save_steps=10**6, logging_steps=1, warmup_ratio=0.0)
    p["train"]["max_text_tokens"] = text_budget(base)
    return p


def text_budget(base: dict) -> int:
    """train.max_text_tokens that admits the bench's padded queries."""
    return max(int(base["train"]["max_text_tokens"]), base.get("bench", {}).get("text_tokens", 0) + 8)


def smoke_cfg(cfg: dict) -> dict:
    """The same configuration at batch 2 (the CPU check)."""
    cfg = json.loads(json.dumps(cfg))
    settings = cfg.get("train") or cfg.get("evaluate")
    key = "dataloader_workers" if cfg["kind"] == "train" else "workers"
    settings[key] = min(settings[key], 2)  # the CPU check shares 2 cores
    size = "micro_batch_size" if cfg["kind"] == "train" else "batch_size"
    cfg[size] = "auto" if cfg[size] == "auto" else 2
    return cfg


# ----------------------------------------------------------------------------------------------
# data: demo scenes rendered by the project's own code, queries padded to an exact token count


def make_rows(args, params: dict, work: Path) -> tuple[list[dict], dict]:
    """Rendered train rows, each padded to exactly `target` tokens (prompt + image + answer); and their facts."""
    from maskgate.model import qwen as M
    from maskgate.data import negatives
    from maskgate.data import prepare
    from maskgate.render import shards
    from maskgate.utils import tables
    from maskgate.model.base import local_size
    from maskgate.model.batching import answer_ids, prompt_text

    s = settings(params)
    data = work / f"data-{args.size}px-{args.demo_images}"
    if not (data / "rendered").is_dir():
        prepare.prepare(s.data, s.prepare, s.seed, data / "prepared", s.limits)
        negatives.build(data / "prepared", data / "negatives", s.negatives, s.seed)
        shards.render(data / "prepared", data / "negatives", data / "rendered", s.render, s.prompt)
    rows = list(tables.iter_shards(data / "rendered", "train"))

    prompt = s.prompt
    # the tokenizer build_tiny gives the local preset (random-8b uses the tiny one too)
    processor = M.set_image_bounds(M.tiny_processor(prompt, M.TinySize(**local_size(s.model)).vocab_size))
    tok = processor.tokenizer
    image = M.image_token_count(args.size)

    def tokens(row, query):
        text = len(tok(prompt_text(processor, prompt, query)).input_ids) - 1  # less the one image placeholder
        return text + image + len(answer_ids(tok, row["label_text"]))

    target = args.tokens or max(tokens(r, r["query"]) for r in rows)
    out = []
    for r in rows:
        query = r["query"]
        for filler in (" a", " the", " of", " x"):
            q = query
            while tokens(r, q) < target:
                q += filler
            if tokens(r, q) == target:
                break
        else:
            raise ValueError(f"row {r['example_id']}: cannot pad query {query!r} to exactly {target} tokens")
        out.append({**r, "query": q, "user": prompt.user_text(q)})
    facts = {"tokens": target, "image_tokens": image, "answer_tokens": len(answer_ids(tok, rows[0]["label_text"])),
             "text_tokens": target - image, "base_rows": len(out)}
    return out, facts


def write_rendered(rows: list[dict], n: int, folder: Path) -> Path:
    """A rendered folder whose train split is exactly n rows (the base rows repeated) and a small val split."""
    from maskgate.utils import tables
    from maskgate.render.shards import SHARD_SCHEMA

    if (folder / "done").exists():
        return folder
    records = [{**rows[i % len(rows)], "example_id": f"{rows[i % len(rows)]['example_id']}~{i // len(rows)}"}
               for i in range(n)]
    folder.mkdir(parents=True, exist_ok=True)
    tables.write_shards(records, folder, "train", SHARD_SCHEMA, 10**6)
    tables.write_shards(records[:8], folder, "val", SHARD_SCHEMA, 10**6)
    (folder / "done").write_text("")
    return folder


# ----------------------------------------------------------------------------------------------
# workers (each in its own process)


def phase(phases: dict, name: str) -> None:
    """Seconds since this process started, at the end of the phase `name`."""
    phases[name] = round(time.time() - STARTED, 1)


def sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_gib():
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


def worker_matmul(args, spec) -> dict:
    """bf16 torch.mm TFLOP/s on this device."""
    import torch

    cuda = torch.cuda.is_available()
    n = 8192 if cuda else 512
    dtype = torch.bfloat16 if cuda else torch.float32
    device = "cuda" if cuda else "cpu"
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)

    def rate(fn, reps=20):
        for _ in range(3):
            fn()
        sync()
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        sync()
        return 2 * n**3 * reps / (time.perf_counter() - t)

    return {"matmul_n": n, "matmul_dtype": str(dtype).replace("torch.", ""), "bf16_flops_per_s": rate(lambda: a @ b)}


def worker_build(args, spec) -> dict:
    """Build (or find) the local preset's base folder once, before the timed configurations."""
    import torch

    from maskgate.model.base import build_local_base

    s = settings(spec["params"])
    cuda = torch.cuda.is_available()
    t = time.time()
    base = build_local_base(s.model, s.prompt, s.seed, Path(spec["model_dir"]), "cuda" if cuda else "cpu",
                            torch.bfloat16 if cuda else torch.float32)
    return {"base": str(base), "build_s": round(time.time() - t, 1)}


def wait_for_go(spec: dict, phases: dict) -> dict:
    """A prestarted worker (see main) has done its imports; it touches the GPU only once the one before has ended.

    Its spec, read again: the first configuration starts before the data exist, with a provisional one."""
    if not spec.get("go"):
        return spec
    go = Path(spec["go"])
    while not go.exists():
        time.sleep(0.05)
    phase(phases, "go")
    return json.loads(Path(spec["file"]).read_text())


def library_head() -> None:
    """The loss as the library computes it (Unsloth's trainer or TRL's), not maskgate.model.answer_loss's."""
    from transformers import Trainer

    from maskgate.model import answer_loss
    from maskgate.model import train as T

    project = T.trainer_class

    def trainer_class(base):
        class LibraryHead(project(base)):
            def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
                inputs.pop(answer_loss.KEY, None)
                # TRL's fused LM head is a Triton kernel, which has no CPU driver: transformers' loss there
                library = base if self.args.device.type == "cuda" else Trainer
                return library.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

        return LibraryHead

    T.trainer_class = trainer_class


def worker_train(args, spec) -> dict:
    from maskgate.model.backend import resolve_backend

    backend = resolve_backend(settings(spec["params"]).train, spec["params"]["model"]["preset"])  # before transformers:
    # unsloth must patch it first (a prestarted worker's spec may be provisional: its backend is already final)
    import torch
    from transformers import TrainerCallback

    from maskgate.model.train import TrainJob, train

    marks, losses, vision_autograd, phases = {}, [], set(), {}
    phase(phases, "imports")
    spec = wait_for_go(spec, phases)
    s, warmup, steps = settings(spec["params"]), spec["warmup"], spec["steps"]
    if spec.get("head") == "library":
        library_head()
    if not spec.get("ahead", True):
        from maskgate.model import scoring

        scoring.Ahead.__call__ = lambda self, batch: batch  # the model makes its own ids and tables
    profile_steps = spec.get("profile", 0) if torch.cuda.is_available() else 0  # after the timed steps
    window = Profile()

    class Timer(TrainerCallback):
        def on_train_begin(self, a, state, control, model=None, **kw):
            # whether the frozen vision tower's outputs are recorded for autograd (backward would run through it)
            def seen(module, args, out):
                vision_autograd.add(bool(out.pooler_output.requires_grad))

            for m in model.modules():
                if type(m).__name__ == "Qwen3VLVisionModel":
                    m.register_forward_hook(seen)
            phase(phases, "model_loaded")

        def on_step_begin(self, a, state, control, **kw):
            if state.global_step == warmup:
                sync()
                marks["t0"] = time.perf_counter()
                phase(phases, "warmup_steps")
            if profile_steps and state.global_step == warmup + steps:
                window.start()

        def on_step_end(self, a, state, control, **kw):
            if state.global_step == 1:
                phase(phases, "first_step")
            if state.global_step == warmup + steps:
                sync()
                marks["t1"] = time.perf_counter()
                phase(phases, "timed_steps")
            if profile_steps and state.global_step == warmup + steps + profile_steps:
                marks["profile"] = window.stop()

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append({"step": state.global_step, "loss": float(logs["loss"])})

    work = Path(spec["work"])
    summary = train(TrainJob.of(s), Path(spec["rendered"]), Path(spec["model_dir"]), work / "checkpoints",
                    work / "live", backend=backend, callbacks=[Timer()])
    if "t0" not in marks or "t1" not in marks:
        raise RuntimeError(f"timer saw steps up to {summary['global_step']}, wanted {warmup + steps}")
    measured = [x["loss"] for x in losses if warmup < x["step"] <= warmup + steps]
    return {"backend": backend, "seconds": marks["t1"] - marks["t0"], "examples": steps * s.train.batch_size,
            "micro_batch": summary["batch"]["micro"],
            "loss_steps": losses, "loss_measured_mean": sum(measured) / len(measured) if measured else None,
            "loss_first": losses[0]["loss"] if losses else None, "peak_gib": peak_gib(),
            "trainable_params": summary["params"]["trainable"], "cuda": torch.cuda.is_available(),
            "vision_autograd": sorted(vision_autograd), "profile": marks.get("profile"), "phases": phases}


def worker_score(args, spec) -> dict:
    import torch
    from peft import get_peft_model
    from transformers import set_seed

    from maskgate.model import qwen as M
    from maskgate.model import speedups
    from maskgate.model.base import build_local_base, lora_config
    from maskgate.model.batching import to_example
    from maskgate.model.scoring import score
    from maskgate.model.train import TrainJob
    from maskgate.utils import tables

    phases = {}
    phase(phases, "imports")
    spec = wait_for_go(spec, phases)
    s = settings(spec["params"])
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    base = build_local_base(s.model, s.prompt, s.seed, Path(spec["model_dir"]), device, dtype)
    model, processor = M.load(base, device=device, dtype=dtype)
    # a LoRA adapter as evaluate loads one (unmerged); B drawn small instead of zero, so merging really changes weights
    set_seed(s.seed)  # the same adapter in every configuration: P(ACCEPT) comparable across them
    model = get_peft_model(model, lora_config(s.train.lora))
    gen = torch.Generator().manual_seed(s.seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 1e-3)
    scoring = speedups.Scoring.of(s.evaluate)
    if not spec.get("vision_tables", True):
        from maskgate.model.scoring import VisionTables

        VisionTables.__call__ = lambda self, grid_thw: {}  # the tower makes its own tables, as before them
    phase(phases, "model_loaded")
    model = speedups.for_scoring(model, scoring, "bench")
    phase(phases, "for_scoring")
    prompt = s.prompt
    shard_rows = list(tables.iter_shards(Path(spec["rendered"]), "train"))
    n, n_warm = spec["examples"], spec["warmup_examples"]
    measured = [to_example(r) for r in shard_rows[:n]]
    warm = [to_example(r) for r in shard_rows[n : n + n_warm]]
    seq = TrainJob.of(s).max_length  # the train stage's budget, which evaluate reads back from verifier.json
    t = time.perf_counter()
    bs = speedups.batch_size(model, processor, prompt, s.render.size, seq, scoring, "bench")  # auto: the probe
    probe_s = time.perf_counter() - t
    kw = {"workers": scoring.workers, "prefetch": scoring.prefetch, "overlap": scoring.overlap}
    score(model, processor, prompt, warm, seq, bs, desc="warm-up", **kw)
    sync()
    phase(phases, "warmup")
    t = time.perf_counter()
    p = score(model, processor, prompt, measured, seq, bs, desc="measured", **kw)
    sync()
    seconds = time.perf_counter() - t
    phase(phases, "measured")
    profiled = None
    if spec.get("profile") and cuda:
        window = Profile()
        try:  # the measurement above is kept whatever happens here
            window.start()
            score(model, processor, prompt, warm[: spec["profile"] * bs], seq, bs, desc="profiled", **kw)
            profiled = window.stop()
        except Exception as e:
            profiled = {"error": f"{type(e).__name__}: {e}"}
    return {"seconds": seconds, "examples": len(measured), "p_accept": [float(x) for x in p],
            "peak_gib": peak_gib(), "cuda": cuda, "batch_used": bs, "probe_s": round(probe_s, 1), "profile": profiled,
            "phases": phases}


def kernel_kind(name: str) -> str:
    """What a GPU kernel does, from its name: the split that says whether matrix products or the rest limit a run."""
    n = name.lower()
    if n.startswith(("memcpy", "memset")):
        return "copy"
    if any(k in n for k in ("sdpa", "flash", "fmha", "attention")):
        return "attention"
    if n.startswith("triton"):  # before conv: inductor names kernels after their ops, convert_element_type too
        return "triton"  # inductor's fused elementwise and reductions
    if "conv" in n:
        return "conv"
    if any(k in n for k in ("gemm", "nvjet", "xmma", "cutlass", "matmul", "splitk")):
        return "gemm"
    return "other"  # eager elementwise, norms, casts, Unsloth's own kernels


class Profile:
    """Where the GPU's time goes between start() and stop(): its busy share of the wall time, top kernels.

    busy = the union of the CUDA kernels' intervals (any stream) over the wall time of the window: what is left
    is the GPU waiting for the CPU (syncs, launches, copies in series), the part overlap and graphs can remove.
    """

    def start(self):
        from torch.profiler import ProfilerActivity, profile

        sync()
        self.prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
        self.prof.start()
        self.t = time.perf_counter()

    def stop(self) -> dict:
        sync()
        wall = time.perf_counter() - self.t
        prof = self.prof
        prof.stop()
        events = [e for e in prof.events() if e.device_type.name == "CUDA" and e.time_range.end > e.time_range.start]
        kinds = {}
        for e in events:
            k = kernel_kind(e.name)
            kinds[k] = kinds.get(k, 0.0) + (e.time_range.end - e.time_range.start) / 1e6
        kernels = sorted((e.time_range.start, e.time_range.end) for e in events)
        busy, end, gaps = 0.0, None, []
        for start, stop in kernels:  # microseconds; merge overlapping intervals, keep the holes between them
            if end is None or start > end:
                if end is not None:
                    gaps.append((end, start))
                busy, end = busy + (stop - start), stop
            elif stop > end:
                busy, end = busy + (stop - end), stop
        cpu = [(e.time_range.start, e.time_range.end, e.name) for e in prof.events() if e.device_type.name == "CPU"]
        top = sorted((e for e in prof.key_averages() if e.self_device_time_total > 0),
                     key=lambda e: e.self_device_time_total, reverse=True)[:16]
        return {"wall_s": round(wall, 3), "gpu_busy_s": round(busy / 1e6, 3),
                "gpu_busy_share": round(busy / 1e6 / wall, 3),
                "by_kind": {k: round(v, 4) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
                "top": [{"name": e.key[:90], "gpu_s": round(e.self_device_time_total / 1e6, 4), "calls": e.count}
                        for e in top],
                "idle": idle_gaps(gaps, cpu, kernels[0][0] if kernels else 0.0)}


def idle_gaps(gaps: list, cpu: list, t0: float, largest: int = 8, min_us: float = 100.0) -> dict:
    """Where the GPU waited between its first and last kernel: the holes' sum and count, the largest ones, and
    what the CPU was doing in them (the CPU ops overlapping each hole, by overlap; nested ops each count, so the
    sums by name overlap: they say which calls the waits sit in, not a partition of the time).

    gaps: (start, end) in microseconds, in time order and disjoint (as Profile.stop finds them); cpu: (start, end,
    name) of the profiler's CPU ops; t0: the first kernel's start, so a hole's `at_ms` is its place in the window."""
    import bisect

    holes = [(start, end) for start, end in gaps if end - start >= min_us]  # still in time order
    ends = [end for _, end in holes]
    inside = [[] for _ in holes]  # per hole: (overlap us, CPU op name)
    for s, e, name in cpu:  # a sweep: each op visits only the holes it overlaps
        i = bisect.bisect_right(ends, s)
        while i < len(holes) and holes[i][0] < e:
            inside[i].append((min(e, holes[i][1]) - max(s, holes[i][0]), name))
            i += 1
    by_name: dict[str, float] = {}
    for ops in inside:
        for us, name in ops:
            by_name[name] = by_name.get(name, 0.0) + us
    length = [end - start for start, end in holes]
    top = sorted(range(len(holes)), key=lambda i: -length[i])[:largest]
    return {"holes_s": round(sum(end - start for start, end in gaps) / 1e6, 4), "holes": len(gaps),
            f"holes_over_{min_us:.0f}us": len(holes),
            f"holes_over_{min_us:.0f}us_s": round(sum(length) / 1e6, 4),
            "largest": [{"ms": round(length[i] / 1e3, 2), "at_ms": round((holes[i][0] - t0) / 1e3, 1),
                         "cpu": [f"{n[:60]} {us / 1e3:.2f}" for us, n in sorted(inside[i], reverse=True)[:5]]}
                        for i in top],
            "cpu_ms_in_holes": {n[:60]: round(us / 1e3, 2)
                                for n, us in sorted(by_name.items(), key=lambda kv: -kv[1])[:12]}}


def worker_setup(args, spec) -> dict:
    """The GPU's part of the setup in one process: the bf16 matmul rate, then the base model."""
    return {**worker_matmul(args, spec), **worker_build(args, spec)}


WORKERS = {"setup": worker_setup, "train": worker_train, "score": worker_score}


# ----------------------------------------------------------------------------------------------
# parent


def start_worker(args, name: str, spec: dict, prestart: bool = False) -> dict:
    """Start one spec in a subprocess (its output to --out/NAME.log); finish_worker waits for it.

    prestart: the worker does its imports and then waits until `go(worker)`; its timeout counts from then."""
    spec_file = args.out / f"{name}.spec.json"
    spec = {**spec, "go": str(args.out / f"{name}.go") if prestart else None, "file": str(spec_file)}
    if prestart:
        Path(spec["go"]).unlink(missing_ok=True)
    spec_file.write_text(json.dumps(spec))
    log = args.out / f"{name}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_file), "--out", str(args.out),
           "--preset", args.preset, "--size", str(args.size)]
    env = {**os.environ, "PYTORCH_CUDA_ALLOC_CONF": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True"),
           "TOKENIZERS_PARALLELISM": "false", "MASKGATE_CACHE": str(args.cache), **spec.get("env", {})}
    f = log.open("w")
    proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    return {"name": name, "proc": proc, "log": log, "file": f, "started": time.time(), "go": spec["go"],
            "spec_file": str(spec_file)}


def stop(pending: dict) -> None:
    """End the workers started ahead that will not run."""
    for w, _ in pending.values():
        if w is not None:
            w["proc"].kill()
            w["proc"].wait()
            w["file"].close()


def go(w: dict, spec: dict | None = None) -> dict:
    """Let a prestarted worker go on to the GPU (with `spec`, its final spec, if it started on a provisional one);
    its timeout counts from now."""
    if spec is not None:
        Path(w["spec_file"]).write_text(json.dumps({**spec, "go": w["go"], "file": w["spec_file"]}))
    if w["go"]:
        Path(w["go"]).write_text("")
        w["started"] = time.time()
    return w


def finish_worker(args, w: dict, timeout: int) -> dict:
    """Wait for a started worker; its JSON result, or a failure record with the log's tail."""
    name, log = w["name"], w["log"]
    try:
        rc = w["proc"].wait(timeout=max(1, timeout - (time.time() - w["started"])))
        status = "ok" if rc == 0 else f"failed (exit {rc})"
    except subprocess.TimeoutExpired:
        w["proc"].kill()
        w["proc"].wait()
        status = f"timeout after {timeout} s"
    w["file"].close()
    result_file = args.out / f"{name}.result.json"
    result = json.loads(result_file.read_text()) if status == "ok" and result_file.exists() else {}
    if status == "ok" and not result:
        status = "failed (no result written)"
    if status != "ok":
        tail = log.read_text(errors="replace").strip().splitlines()[-15:]
        print(f"{name}: {status}; last lines of {log}:\n    " + "\n    ".join(tail), flush=True)
        result = {"error_tail": tail}
    return {"name": name, "status": status, "wall_s": round(time.time() - w["started"], 1), **result}


def spec_for(args, name: str, cfg: dict, base: dict, rows: list[dict] | None, model_dir: Path) -> dict:
    """One configuration's worker spec (its data written), or {"failed": ...} if its params do not check.

    rows None (the data not made yet): a provisional spec, enough for its process to start and import."""
    batch = cfg["micro_batch_size"] if cfg["kind"] == "train" else cfg["batch_size"]
    if cfg["kind"] == "train":
        n = (args.warmup + args.steps + args.profile) * (AUTO_EFFECTIVE if batch == "auto" else batch)
    else:
        n = args.score_examples + args.score_warmup
    rendered = None if rows is None else write_rendered(rows, n, args.work / f"rendered-{n}")
    if cfg["kind"] == "train":
        params = config_params(base, cfg, args.warmup, args.steps)
    else:
        params = json.loads(json.dumps(base))
        params["evaluate"].update(cfg["evaluate"], batch_size=batch)
        params["train"]["max_text_tokens"] = text_budget(base)
    params.pop("bench", None)
    try:
        settings(params, f"{name}'s params")  # checked here, before its process starts
    except config.ParamsError as e:
        return {"failed": str(e)}
    shutil.rmtree(args.work / name, ignore_errors=True)  # checkpoints of an earlier run would be resumed from
    return {"kind": cfg["kind"], "params": params, "warmup": args.warmup, "steps": args.steps, "batch": batch,
            "rendered": rendered and str(rendered), "model_dir": str(model_dir), "work": str(args.work / name),
            "examples": args.score_examples, "warmup_examples": args.score_warmup, "profile": args.profile,
            "vision_tables": cfg.get("vision_tables", True), "ahead": cfg.get("ahead", True),
            "head": cfg.get("head"), "env": cfg.get("env", {})}


def derive(out: dict, cfg: dict, spec: dict, facts: dict, rate: float | None, model_dir: Path) -> dict:
    """A finished configuration's figures: examples/s, tokens/s, MFU, ... added to its worker's result."""
    from maskgate.model import flops

    batch = spec["batch"]
    used = out.get("micro_batch") if cfg["kind"] == "train" else out.get("batch_used")
    out.update(kind=cfg["kind"], batch=(f"a{used}" if used else "auto") if batch == "auto" else batch,
               settings=cfg.get("train") or cfg.get("evaluate"))
    if out["status"] != "ok":
        return out
    lora = settings(spec["params"]).train.lora
    shape = flops.Shape.from_config(model_config(model_dir))
    tokens = facts["tokens"] if cfg["kind"] == "train" else facts["tokens"] - facts["answer_tokens"]
    if cfg["kind"] == "train":
        model_f = flops.training_flops(shape, tokens, facts["image_tokens"], lora.r, lora.targets,
                                       facts["answer_tokens"])
        gc = cfg["train"]["gradient_checkpointing"]  # Unsloth's too: base.load_model passes it to both of its calls
        hw_f = flops.hardware_flops(shape, tokens, facts["image_tokens"], lora.r, lora.targets,
                                    facts["answer_tokens"], checkpointing=bool(gc))
    else:
        model_f = hw_f = flops.scoring_flops(shape, tokens, facts["image_tokens"])
    eps = out["examples"] / out["seconds"]
    out.update(examples_per_s=eps, tokens_per_example=tokens, padded_tokens_per_example=tokens,
               tokens_per_s=eps * tokens, padded_tokens_per_s=eps * tokens, model_flops_per_example=model_f,
               hardware_flops_per_example=hw_f, mfu=eps * model_f / rate if rate else None,
               hfu=eps * hw_f / rate if rate else None)
    return out


def model_config(model_dir: Path):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(model_dir / "base"))


def compare(results: dict) -> None:
    """Ratios and equality checks against the references, added in place."""
    import numpy as np

    ref_t, ref_l, ref_s = (results.get(k) for k in (REF_TRAIN, REF_LOSS, REF_SCORE))
    for r in results.values():
        if r.get("status") != "ok" or "examples_per_s" not in r:
            continue
        if r["kind"] == "train":
            if ref_t and ref_t.get("status") == "ok":
                r["x_ref"] = r["examples_per_s"] / ref_t["examples_per_s"]
            if ref_l and ref_l.get("status") == "ok" and r.get("loss_measured_mean") is not None:
                r["dloss_vs_hf"] = abs(r["loss_measured_mean"] - ref_l["loss_measured_mean"])
        elif ref_s and ref_s.get("status") == "ok":
            r["x_ref"] = r["examples_per_s"] / ref_s["examples_per_s"]
            n = min(len(r["p_accept"]), len(ref_s["p_accept"]))
            r["max_dp_vs_ref"] = float(np.max(np.abs(np.array(r["p_accept"][:n]) - np.array(ref_s["p_accept"][:n]))))


def fmt(v, spec):
    """format(v, spec), or a dash as wide as the spec's width when there is no value."""
    width = int("".join(c for c in spec.split(".")[0] if c.isdigit()) or 0)
    return "-".rjust(width) if v is None else format(v, spec)


def table(results: dict, rate: dict) -> str:
    lines = [f"bf16 torch.mm {fmt(rate.get('bf16_flops_per_s') and rate['bf16_flops_per_s'] / 1e12, '.0f')} TFLOP/s "
             f"(n={rate.get('matmul_n')}, {rate.get('device', '?')})",
             f"{'config':38} {'batch':>5} {'ex/s':>7} {'x ref':>6} {'tok/s':>8} {'tok/ex':>6} {'peak GiB':>8} "
             f"{'MFU':>6} {'HFU':>6} {'loss':>8} {'|dloss|':>8} {'max|dP|':>8}  status"]
    for name, r in results.items():
        ok = r.get("status") == "ok"
        lines.append(
            f"{name:38} {r.get('batch', '-'):>5} {fmt(r.get('examples_per_s'), '7.2f')} {fmt(r.get('x_ref'), '6.2f')} "
            f"{fmt(r.get('tokens_per_s'), '8.0f')} {fmt(r.get('tokens_per_example'), '6d')} {fmt(r.get('peak_gib'), '8.1f')} "
            f"{fmt(r.get('mfu'), '6.1%')} {fmt(r.get('hfu'), '6.1%')} {fmt(r.get('loss_measured_mean'), '8.4f')} "
            f"{fmt(r.get('dloss_vs_hf'), '8.4f')} {fmt(r.get('max_dp_vs_ref'), '8.2e')}  {r.get('status') if not ok else 'ok'}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="results: one JSON per configuration, results.jsonl, logs")
    ap.add_argument("--work", type=Path, default=Path("/tmp/maskgate-throughput"), help="data, model, checkpoints")
    ap.add_argument("--cache", type=Path, default=ROOT / "bench" / "cache",
                    help="where micro-batch `auto` remembers its sizes (MASKGATE_CACHE): bring batch_sizes.json back "
                         "from a GPU run and commit it, and the next run on that card skips the search (a minute of a "
                         "10-minute call)")
    ap.add_argument("--configs", default=None, help=f"comma-separated, from: {', '.join(CONFIGS)}; or `table`: "
                    f"{', '.join(TABLE)} (default: all)")
    ap.add_argument("--steps", type=int, default=None, help="measured steps (batches) per configuration (default 5)")
    ap.add_argument("--warmup", type=int, default=None, help="steps before timing starts (default 3)")
    ap.add_argument("--score-examples", type=int, default=None,
                    help=f"examples each scoring configuration times (default {SCORE_EXAMPLES})")
    ap.add_argument("--score-warmup", type=int, default=None, help=f"examples scored before timing (default {SCORE_WARMUP})")
    ap.add_argument("--tokens", type=int, default=None, help="tokens per training example (default 617; 0 = longest row)")
    ap.add_argument("--size", type=int, default=None, help="overlay side in px (default 672)")
    ap.add_argument("--preset", default=None, help="model preset (default random-8b)")
    ap.add_argument("--demo-images", type=int, default=None, help="demo scenes rendered (rows are repeated as needed)")
    ap.add_argument("--timeout", type=int, default=None, help="seconds per configuration (default 300)")
    ap.add_argument("--budget", type=int, default=0,
                    help="seconds for the whole command (0 = no limit): a configuration gets at most what is left, "
                         "less 20 s to print the table, and none is started with under 60 s left")
    ap.add_argument("--profile", type=int, default=0,
                    help="after timing, profile this many scoring batches or training steps (GPU busy share, top "
                         "kernels; CUDA only)")
    ap.add_argument("--smoke", action="store_true", help="CPU check: tiny preset, 64 px, batch 2, 2 steps")
    ap.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    smoke = {"steps": 2, "warmup": 1, "score_examples": 4, "score_warmup": 2, "tokens": 0, "size": 64, "preset": "tiny", "demo_images": 8, "timeout": 300}
    full = {"steps": 5, "warmup": 3, "score_examples": SCORE_EXAMPLES, "score_warmup": SCORE_WARMUP, "tokens": 617, "size": 672, "preset": "random-8b", "demo_images": 40, "timeout": 300}
    for key, value in (smoke if args.smoke else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.out.mkdir(parents=True, exist_ok=True)

    if args.worker:  # inside a subprocess: run one spec, write its result
        spec = json.loads(args.worker.read_text())
        result = WORKERS[spec["kind"]](args, spec)
        name = args.worker.name[: -len(".spec.json")]
        (args.out / f"{name}.result.json").write_text(json.dumps(result))
        return 0

    names = args.configs.split(",") if args.configs else (SMOKE_CONFIGS if args.smoke else list(CONFIGS))
    names = [n for name in names for n in (TABLE if name == "table" else [name])]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        ap.error(f"unknown configurations {unknown}; known: {', '.join(CONFIGS)}")
    started = time.time()
    args.work.mkdir(parents=True, exist_ok=True)
    base = base_params(args)
    model_dir = args.work / f"model-{args.preset}"
    # The GPU's setup (matmul rate, then the random base model) runs in its own process while this one renders
    # the data on the CPU: they share nothing, and one after the other they took about 75 s of a 10-minute call.
    build_params = json.loads(json.dumps(base))
    setup = start_worker(args, "setup", {"kind": "setup", "params": build_params, "model_dir": str(model_dir)})
    env = {"device": None}
    try:
        import torch

        cuda = torch.cuda.is_available()
        env = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "torch": torch.__version__}
    except Exception as e:  # the bench still runs; the device is unknown
        cuda, env["device_error"] = False, str(e)

    def runnable(name):
        return not (CONFIGS[name].get("backend") == "unsloth" and not cuda)

    def config_of(name):  # the configuration this run measures: the CPU check's at batch 2
        return smoke_cfg(CONFIGS[name]) if args.smoke else CONFIGS[name]

    # Each configuration's process starts while the one before it runs: it does its imports on the CPU (40 s for
    # Unsloth's, 13-17 s for a scoring one, 2026-12-06 phases) and waits, and touches the GPU only once the one
    # before has ended, so every timing is still its own and the call spends its 10 minutes on the GPU. The first
    # one starts now, beside the setup, on a provisional spec (its data are not made yet).
    pending = {}
    first = next((n for n in names if runnable(n)), None)
    if first:
        provisional = spec_for(args, first, config_of(first), base, None, model_dir)
        if "failed" not in provisional:
            pending[first] = (start_worker(args, first, provisional, prestart=True), None)
    t = time.time()
    rows, facts = make_rows(args, base, args.work)
    base["bench"] = {"text_tokens": facts["text_tokens"]}
    print(f"data: {facts['base_rows']} rendered rows at {args.size} px, {facts['tokens']} tokens per training example "
          f"({facts['image_tokens']} image), made in {time.time() - t:.0f} s", flush=True)

    built = finish_worker(args, setup, int(args.budget - (time.time() - started) - 30) if args.budget else 900)
    rate = {k: built.get(k) for k in ("matmul_n", "matmul_dtype", "bf16_flops_per_s")}
    rate["device"] = env["device"]
    bf16 = rate.get("bf16_flops_per_s")
    print(f"setup: {built['status']} in {built['wall_s']} s: bf16 {fmt(bf16 and bf16 / 1e12, '.1f')} TFLOP/s; base model "
          f"{built.get('build_s', '-')} s", flush=True)
    if built["status"] != "ok":
        stop(pending)
        return 1

    results = {}
    jsonl = args.out / "results.jsonl"

    def launch(name):
        spec = spec_for(args, name, config_of(name), base, rows, model_dir)
        return (None if "failed" in spec else start_worker(args, name, spec, prestart=True)), spec

    try:
        for i, name in enumerate(names):
            left = args.budget - (time.time() - started) - 20 if args.budget else args.timeout
            cfg = config_of(name)
            if left < 60:
                r = {"name": name, "status": "not run: out of --budget", "kind": cfg["kind"]}
            elif not runnable(name):
                r = {"name": name, "status": "skipped: Unsloth needs CUDA", "kind": cfg["kind"]}
            else:
                w, spec = pending.pop(name, None) or launch(name)
                final = None
                if spec is None:  # started before the data were made: its spec now
                    spec = final = spec_for(args, name, cfg, base, rows, model_dir)
                    if "failed" in spec:
                        stop({name: (w, None)})
                        w = None
                if w is None:
                    print(f"{name}: {spec['failed']}", flush=True)
                    r = {"name": name, "status": f"failed: {spec['failed']}", "kind": cfg["kind"]}
                else:
                    go(w, final)
                    following = next((n for n in names[i + 1:] if runnable(n)), None)
                    if following and following not in pending and following != name:
                        pending[following] = launch(following)
                    r = derive(finish_worker(args, w, int(min(args.timeout, left))), cfg, spec, facts, bf16, model_dir)
            r.update(env, date=time.strftime("%Y-%m-%d"), preset=args.preset, size=args.size)
            results[name] = r
            (args.out / f"{name}.json").write_text(json.dumps(r, indent=1))
            with jsonl.open("a") as f:  # as each one ends: a run killed later keeps what it measured
                f.write(json.dumps({**r, "matmul": rate, "command": " ".join(sys.argv)}) + "\n")
            print(f"{name}: {r['status']}, {fmt(r.get('examples_per_s'), '.2f')} examples/s, peak "
                  f"{fmt(r.get('peak_gib'), '.1f')} GiB, wall {r.get('wall_s', '-')} s"
                  + (f", vision recorded for autograd: {r['vision_autograd']}" if "vision_autograd" in r else ""), flush=True)
            if r.get("profile") and "error" in r["profile"]:
                print(f"  profile failed: {r['profile']['error']}", flush=True)
            elif r.get("profile"):
                pr = r["profile"]
                print(f"  profile: GPU busy {pr['gpu_busy_s']} s of {pr['wall_s']} s ({pr['gpu_busy_share']:.1%}); kernels by kind: "
                      + ", ".join(f"{k} {v} s" for k, v in pr.get("by_kind", {}).items()) + "; top: "
                      + "; ".join(f"{k['name'][:50]} {k['gpu_s']} s x{k['calls']}" for k in pr["top"][:6]), flush=True)
                idle = pr.get("idle") or {}
                if idle:
                    print(f"  GPU idle between kernels: {idle['holes_s']} s in {idle['holes']} holes ("
                          f"{idle['holes_over_100us_s']} s in the {idle['holes_over_100us']} over 0.1 ms); largest (ms): "
                          + ", ".join(str(h["ms"]) for h in idle["largest"]) + "; the CPU in the holes (ms): "
                          + "; ".join(f"{k} {v}" for k, v in list(idle["cpu_ms_in_holes"].items())[:8]), flush=True)
            if r.get("phases"):
                print("  phases (s since its process started): "
                      + ", ".join(f"{k} {v}" for k, v in r["phases"].items()), flush=True)
    finally:
        stop(pending)  # started ahead for a configuration the budget then left out
    compare(results)
    for name, r in results.items():  # the JSONs again, now with the comparisons against the references
        if "examples_per_s" in r:
            (args.out / f"{name}.json").write_text(json.dumps(r, indent=1))
    print("\n" + table(results, rate), flush=True)
    (args.out / "table.txt").write_text(table(results, rate) + "\n")
    return 0 if all(r["status"] == "ok" or r["status"].startswith("skipped") for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

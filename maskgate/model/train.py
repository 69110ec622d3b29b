"""Train the verifier: LoRA on Qwen3-VL with TRL's SFTTrainer, answer-only loss, resumable, DVCLive curves.

Two backends run the same loop (same dataset, same collator, same Trainer subclass):

* ``hf``: transformers + peft. The CPU path (tests, demo) and a plain GPU path.
* ``unsloth``: Unsloth's ``FastVisionModel`` (16-bit LoRA or 4-bit QLoRA), faster on one GPU
  (BENCHMARKS.md). Only on a machine with CUDA.

Why ``resolve_backend`` lives here and this module imports nothing heavy at import time: on a
machine without a GPU ``import unsloth`` patches transformers and trl into a CPU mode whose vision
classes raise, so the CPU path must never import it; on the GPU path it must be imported *before*
transformers. The train stage therefore calls ``resolve_backend(params)`` first thing, before it
imports anything else from the project; ``resolve_backend`` does the ``import unsloth`` itself when
it picks unsloth.

Why our own collator (``batching.training_batch``) rather than TRL's or Unsloth's: it puts the loss
on the answer token(s) only and checks lengths instead of truncating (TRL's default
``max_length=1024`` cuts sequences, and a cut through the image tokens or the answer is silent
damage). ``train.max_text_tokens`` budgets the text (prompt text + answer); the image tokens of a
``render.size`` image are added on top, so changing the render size never needs a second knob.

The loss is the mean cross-entropy of the answer token(s). TRL 1.15's SFTTrainer computes it with a
Triton kernel (its fused LM head) that has no CPU driver, so off CUDA the Trainer subclass here takes
transformers' own loss of the model on the same labels; on CUDA TRL's (or Unsloth's) runs unchanged.

Resume: the Trainer writes checkpoints (adapter as safetensors + optimizer, scheduler and RNG states)
into ``checkpoints/`` every ``save_steps`` optimizer steps and at the last step. A re-run resumes from
the newest one and ends at the same step count as an uninterrupted run. A checkpoint folder written
with other settings (params or data) is never resumed from: ``checkpoints/fingerprint.json`` records
what the checkpoints belong to, and a mismatch clears the folder (DVC keeps it with ``persist: true``
across param changes).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

BACKENDS = ("auto", "hf", "unsloth")

# Every key of params["train"], with its default. A missing key takes the default; an unknown key is
# an error (a typo in `dvc exp run -S train.batchsize=...` must not pass silently).
TRAIN_DEFAULTS: dict = {
    "backend": "auto",  # auto | hf | unsloth; auto = unsloth when CUDA works, unsloth imports and the preset is not tiny
    "batch_size": 64,  # effective batch: micro_batch_size x gradient accumulation x world size
    "gpus": 1,  # data-parallel processes, one per GPU; > 1: the stage relaunches itself under torchrun (launch.py)
    "micro_batch_size": 8,  # examples per forward/backward on one device
    "epochs": 1,
    "warmup_ratio": 0.03,  # share of optimizer steps with linear warm-up
    "lr_scheduler": "linear",  # transformers' lr_scheduler_type
    "weight_decay": 0.0,
    "max_grad_norm": 1.0,  # 0 = no clipping
    "max_text_tokens": 256,  # prompt text + answer tokens; image tokens of render.size come on top
    "lora": {
        "r": 16,
        "alpha": 32,
        "dropout": 0.05,
        # peft target_modules: a list of module-name suffixes, a regex string, or "all-linear".
        # Default: the language model's attention and MLP projections (the vision tower's are named
        # qkv/proj/linear_fc1/linear_fc2 and stay frozen).
        "targets": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        # modules trained in full and saved with the adapter (peft modules_to_save; a name matches every
        # module whose name ends with it, so "proj" takes q_proj ... down_proj too), e.g. [lm_head].
        # Not LoRA on lm_head: TRL computes the loss from lm_head.weight directly and refuses that.
        # Full fine-tuning in adapter form (the demo's random tiny model, where LoRA learns far slower):
        # targets [pos_embed] (peft needs one LoRA target) and modules_to_save
        # [proj, qkv, linear_fc1, linear_fc2, lm_head] = every linear and conv layer.
        "modules_to_save": [],
    },
    "gradient_checkpointing": False,  # true | false | auto (on except for the tiny preset); off: fastest on 80 GB
    "load_in_4bit": False,  # unsloth backend only: true = QLoRA on the pre-quantised weights
    # hf backend only: the frozen language-model linears in FP8 (maskgate/model/fp8.py); a no-op that says why off
    # CUDA or on GPUs before compute capability 8.9, so the CPU demo runs the same params
    "fp8": False,
    "save_steps": 100,  # optimizer steps between checkpoints (the last step is always saved)
    "keep_checkpoints": 2,  # newest checkpoints kept in checkpoints/
    "eval_steps": 100,  # optimizer steps between evaluations (and at the last step); 0 = only at the end
    "eval_examples": 256,  # val examples (a seeded random subset) for eval loss and AUROC curves
    "logging_steps": 10,
    "dataloader_workers": 0,
    "cpu_threads": 0,  # torch.set_num_threads on the CPU path; 0 = leave torch's default
}


class ParamsError(ValueError):
    """Bad or inconsistent training settings."""


# ----------------------------------------------------------------------------------------------
# settings


def _merge(defaults: dict, given: dict | None, where: str) -> dict:
    given = dict(given or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ParamsError(f"unknown {where} keys {unknown}; known: {sorted(defaults)}")
    out = {}
    for key, default in defaults.items():
        value = given.get(key, default)
        out[key] = _merge(default, value, f"{where}.{key}") if isinstance(default, dict) else value
    return out


def train_settings(params: dict) -> dict:
    """params["train"] with defaults filled in (TRAIN_DEFAULTS); ParamsError on unknown keys or bad values."""
    cfg = _merge(TRAIN_DEFAULTS, params.get("train"), "train")
    if cfg["backend"] not in BACKENDS:
        raise ParamsError(f"train.backend must be one of {BACKENDS}, got {cfg['backend']!r}")
    for key in ("batch_size", "micro_batch_size", "gpus", "epochs", "max_text_tokens", "save_steps", "logging_steps"):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise ParamsError(f"train.{key} must be a positive integer, got {cfg[key]!r}")
    if cfg["gradient_checkpointing"] not in (True, False, "auto"):
        raise ParamsError(f"train.gradient_checkpointing must be true, false or auto, got {cfg['gradient_checkpointing']!r}")
    if not isinstance(cfg["fp8"], bool):
        raise ParamsError(f"train.fp8 must be true or false, got {cfg['fp8']!r}")
    return cfg


def world_size() -> int:
    """Processes training together (torchrun sets WORLD_SIZE); 1 for a plain run."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def gradient_accumulation(batch_size: int, micro_batch_size: int, world: int = 1) -> int:
    """Steps to accumulate so that micro_batch_size x steps x world == batch_size; ParamsError if impossible."""
    per_step = micro_batch_size * world
    if batch_size % per_step:
        raise ParamsError(
            f"train.batch_size {batch_size} (effective batch) is not a multiple of train.micro_batch_size "
            f"{micro_batch_size} x world size {world} = {per_step}"
        )
    return batch_size // per_step


def max_length(params: dict, cfg: dict | None = None) -> int:
    """Total token budget of one training sequence: text budget + the image tokens of render.size."""
    from maskgate.model.qwen import image_token_count  # torch + transformers, but only once the backend is chosen

    cfg = cfg or train_settings(params)
    return int(cfg["max_text_tokens"]) + image_token_count(int(params["render"]["size"]))


# ----------------------------------------------------------------------------------------------
# backend choice: must run before anything imports transformers


def _cuda_available() -> bool:
    import torch  # torch alone does not patch anything; unsloth may still be imported after it

    return torch.cuda.is_available()


def _import_unsloth() -> bool:
    os.environ.setdefault("UNSLOTH_RETURN_LOGITS", "1")  # FACTS: else logits are empty when labels are passed
    try:
        import unsloth  # noqa: F401  (imported for its patches, before transformers)
    except ImportError:
        return False
    return True


# Measured on two H100s (bench/data_parallel.py, BENCHMARKS.md): Unsloth 2026.10.9 under torchrun fails
# on Qwen3-VL in the first training step; the hf backend scaled 1.78x on two GPUs.
UNSLOTH_DATA_PARALLEL = (
    "train.backend=unsloth does not run data-parallel: Unsloth 2026.10.9 failed on Qwen3-VL under torchrun "
    "('too many values to unpack', BENCHMARKS.md); use train.backend: hf (auto picks it) with train.gpus > 1"
)


def resolve_backend(params: dict) -> str:
    """"hf" or "unsloth" for params["train"]["backend"]; imports unsloth when (and only when) it picks it.

    Call it at the top of the entry point, before importing transformers or any project module that
    does: unsloth must patch transformers before its classes are imported.
    auto: unsloth if CUDA is available, the preset is not the tiny one (a CPU/CI model: hf serves it
    on any machine), training is not data-parallel, transformers is not imported yet, and
    ``import unsloth`` works; else hf. Data-parallel training (train.gpus > 1, or a launcher's
    WORLD_SIZE > 1) runs on hf only: see UNSLOTH_DATA_PARALLEL.
    """
    cfg = train_settings(params)
    want = cfg["backend"]
    preset = params["model"]["preset"]
    if want == "hf":
        return "hf"
    if cfg["gpus"] > 1 or world_size() > 1:
        if want == "unsloth":
            raise ParamsError(UNSLOTH_DATA_PARALLEL)
        return "hf"  # auto: the data-parallel path that ran (BENCHMARKS.md)
    if want == "unsloth":
        if not _cuda_available():
            raise ParamsError("train.backend=unsloth needs a CUDA GPU (on CPU `import unsloth` breaks transformers)")
        if "unsloth" not in sys.modules and "transformers" in sys.modules:
            raise RuntimeError("train.backend=unsloth: resolve_backend must run before transformers is imported")
        if not _import_unsloth():
            raise ParamsError("train.backend=unsloth but unsloth is not installed (requirements-gpu.txt)")
        return "unsloth"
    if preset == "tiny" or not _cuda_available():
        return "hf"
    if "unsloth" not in sys.modules and "transformers" in sys.modules:
        print("train: transformers was imported before resolve_backend; using backend hf", file=sys.stderr)
        return "hf"
    return "unsloth" if _import_unsloth() else "hf"


# ----------------------------------------------------------------------------------------------
# data


KEEP_COLUMNS = ["example_id", "query", "label", "label_text", "system", "user", "overlay"]


def load_split(rendered: Path, split: str):
    """The render stage's `{split}-*.parquet` shards as a `datasets.Dataset` (only the columns used)."""
    from datasets import load_dataset

    from maskgate.utils import tables
    files = sorted(str(p) for p in Path(rendered).glob(f"{split}-*.parquet"))
    if not files:
        raise FileNotFoundError(f"no {split}-*.parquet shards in {rendered}; run the render stage first")
    for f in files:  # a shard cut short: an error naming it, not one from deep inside datasets
        tables.open_parquet(f)
    return load_dataset("parquet", data_files={split: files}, split=split).select_columns(KEEP_COLUMNS)


def check_prompt(dataset, prompt, split: str) -> None:
    """The shards were rendered with this prompt: their system/user/label_text agree with it."""
    for row in dataset.select_columns(["example_id", "query", "label", "label_text", "system", "user"]):
        if (row["system"], row["user"], row["label_text"]) != (
            prompt.system, prompt.user_text(row["query"]), prompt.label_text(row["label"])
        ):
            raise ValueError(
                f"{split} example {row['example_id']} was rendered with another prompt than params.prompt: "
                "re-run the render stage"
            )


def to_example(row: dict):
    """A shard row -> batching.Example (the overlay JPEG decoded)."""
    import io

    from PIL import Image

    from maskgate.model.batching import Example

    image = Image.open(io.BytesIO(row["overlay"]))
    image.load()
    return Example(image=image.convert("RGB"), query=row["query"], answer=row["label_text"], key=row["example_id"])


class Collator:
    """Shard rows -> a training batch: answer-only labels, length check, no truncation (batching.training_batch)."""

    def __init__(self, processor, prompt, max_length: int):
        self.processor, self.prompt, self.max_length = processor, prompt, max_length

    def __call__(self, rows: list[dict]):
        from maskgate.model.batching import training_batch

        return training_batch(self.processor, self.prompt, [to_example(r) for r in rows], self.max_length)


# ----------------------------------------------------------------------------------------------
# model


def local_size(params: dict, preset: str) -> dict:
    """TinySize fields of a locally built preset (tiny, random-8b): its shape, then params model.tiny."""
    from maskgate.model.qwen import preset_size

    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in (params["model"].get("tiny") or {}).items()}
    return preset_size(preset, overrides)


def lora_config(lora: dict):
    from peft import LoraConfig

    return LoraConfig(
        r=int(lora["r"]),
        lora_alpha=float(lora["alpha"]),
        lora_dropout=float(lora["dropout"]),
        target_modules=lora["targets"],
        modules_to_save=list(lora["modules_to_save"]) or None,
        bias="none",
        task_type="CAUSAL_LM",
    )


def build_local_base(params: dict, preset: str, out_dir: Path, device: str, dtype) -> Path:
    """`out_dir/base`: the local preset built from the seed, reused when already built with the same settings.

    The build is deterministic, so a folder stamped (in `out_dir/base.json`) with the same seed, size and
    prompt is what a rebuild would write; random-8b takes minutes to draw and 16 GB to write. The folder
    is built under a temporary name and renamed, so a half-written base is never taken for a built one.
    """
    from maskgate.model import qwen as M
    from maskgate.prompt import Prompt

    prompt = Prompt.from_params(params)
    size = local_size(params, preset)
    stamp = json.loads(json.dumps(
        {"preset": preset, "seed": int(params["seed"]), "size": size, "prompt": [prompt.system, prompt.user, prompt.answers]}
    ))
    base, stamp_file = out_dir / "base", out_dir / "base.json"
    if base.is_dir() and stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp:
        return base
    tmp = out_dir / ".base.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    M.build_tiny(tmp, prompt, seed=int(params["seed"]), device=device, dtype=dtype, **size)
    shutil.rmtree(base, ignore_errors=True)
    tmp.rename(base)
    stamp_file.write_text(json.dumps(stamp, indent=1) + "\n")
    return base


@dataclass(frozen=True)
class Base:
    """The base model a run trains on: what `from_pretrained` gets, at which commit, in which precision."""

    src: str  # a local folder (local presets) or a hub repository id
    revision: str | None  # the hub commit (hub.resolve); None for a local folder
    load_in_4bit: bool = False  # trained as QLoRA: scored on the same 4-bit weights (verifier.load_verifier)
    prequantized: bool = False  # the repository holds 4-bit weights (Unsloth's bnb-4bit), else quantised on load

    def record(self) -> dict:
        return {"repo": self.src, "revision": self.revision, "load_in_4bit": self.load_in_4bit,
                "prequantized": self.prequantized}


def resolve_base(params: dict, cfg: dict, backend: str, out_dir: Path, device: str) -> Base:
    """The base of params' preset: a local preset built into `out_dir/base`, or a hub repository pinned to a commit.

    Refuses, before anything is downloaded or built, a model too large to train without a CUDA GPU.
    """
    import torch

    from maskgate.utils import hub
    from maskgate.model import qwen as M
    preset = params["model"]["preset"]
    if preset not in M.PRESETS:
        raise ParamsError(f"model.preset must be one of {sorted(M.PRESETS)}, got {preset!r}")
    cuda = device.startswith("cuda")
    four_bit = backend == "unsloth" and bool(cfg["load_in_4bit"])
    if preset in M.LOCAL_PRESETS:
        if preset != "tiny" and not cuda:
            raise ParamsError(f"model.preset {preset} has Qwen3-VL-8B's shape and no CUDA GPU is available: "
                              "train it on a GPU, or set model.preset: tiny for a CPU run")
        dtype = torch.bfloat16 if cuda else torch.float32
        return Base(str(build_local_base(params, preset, Path(out_dir), device, dtype)), None, four_bit)
    repo = M.source(preset, backend, four_bit)
    revision = params["model"]["revision_4bit" if four_bit else "revision"]
    base = Base(repo, hub.resolve(repo, revision), four_bit, prequantized=four_bit)
    M.check_device(base.src, base.revision, cuda)
    return base


def load_model(params: dict, cfg: dict, backend: str, base: Base, device: str):
    """(peft model in train mode, processor) on `base`, with fresh LoRA weights drawn from the seed."""
    import torch
    from transformers import set_seed

    from maskgate.utils import hub
    from maskgate.model import qwen as M
    preset = params["model"]["preset"]
    seed, lora = int(params["seed"]), cfg["lora"]
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    if backend == "unsloth":
        from unsloth import FastVisionModel

        if cfg["fp8"]:
            raise ParamsError("train.fp8 runs on the hf backend only (Unsloth has its own kernels): set train.backend: hf")
        # train.gradient_checkpointing here too: "unsloth" is its offloading variant, False none at all
        # (both calls take it: get_peft_model's own default would turn it back on)
        checkpointing = "unsloth" if _checkpointing(cfg, preset) else False
        M.require_safetensors(base.src, "base model")
        with hub.errors(f"model {base.src}"):
            # use_exact_model_name: else Unsloth swaps Qwen/... for its own mirror unsloth/... (another repository)
            model, processor = FastVisionModel.from_pretrained(
                base.src, revision=base.revision, use_exact_model_name=True, load_in_4bit=base.load_in_4bit,
                use_gradient_checkpointing=checkpointing,
            )
        model = FastVisionModel.get_peft_model(
            model,
            use_gradient_checkpointing=checkpointing,
            r=int(lora["r"]),
            lora_alpha=float(lora["alpha"]),
            lora_dropout=float(lora["dropout"]),
            target_modules=lora["targets"],
            bias="none",
            random_state=seed,
            use_rslora=False,
            loftq_config=None,
            **({"modules_to_save": list(lora["modules_to_save"])} if lora["modules_to_save"] else {}),
        )
        FastVisionModel.for_training(model)
        return model, M.set_image_bounds(processor)

    from peft import get_peft_model

    model, processor = M.load(base.src, device=device, dtype=dtype, revision=base.revision)
    model.train()
    set_seed(seed)  # LoRA's A matrices are drawn now
    model = get_peft_model(model, lora_config(lora))
    if cfg["fp8"]:  # after peft: it converts the frozen base_layer inside each LoRA layer
        from maskgate.model import fp8
        fp8.apply(model, device, "train")
    if _checkpointing(cfg, preset):
        model.enable_input_require_grads()
    return model, processor


def check_lengths(processor, prompt, datasets_: dict, seq_len: int, image_tokens: int) -> None:
    """Every training and validation example fits `seq_len` with the real tokenizer, checked before the first step.

    The collator checks each batch too, but a long query found there stops a run hours in (and its resume at
    the same place); this reads only the query and answer columns, so it takes seconds per 100k examples.
    """
    from maskgate.model.batching import check_texts

    for split, ds in datasets_.items():
        rows = ds.select_columns(["example_id", "query", "label_text"])
        check_texts(processor, prompt, zip(rows["example_id"], rows["query"], rows["label_text"]), seq_len,
                    image_tokens, desc=f"train: checking {split} lengths")


def _checkpointing(cfg: dict, preset: str) -> bool:
    g = cfg["gradient_checkpointing"]
    return preset != "tiny" if g == "auto" else bool(g)


# ----------------------------------------------------------------------------------------------
# checkpoints and curves


# Settings that do not change the weights a run ends with: changing them keeps the checkpoints.
# `gpus` too: the effective batch and the examples of each optimizer step are the same on any GPU count
# (accelerate deals batch i to rank i mod N), so a run may resume on another count; only the dropout
# masks differ (each rank has its own RNG state, restored when the count is the same).
NOT_IN_FINGERPRINT = {"save_steps", "keep_checkpoints", "eval_steps", "eval_examples", "logging_steps",
                      "dataloader_workers", "cpu_threads", "gpus"}


def fingerprint(params: dict, rendered: Path, backend: str) -> dict:
    """What a checkpoint folder belongs to: every setting that changes the training, and the data files."""
    files = sorted(Path(rendered).glob("*.parquet"))
    data = hashlib.sha256("".join(f"{p.name}:{p.stat().st_size};" for p in files).encode()).hexdigest()
    keys = {k: params.get(k) for k in ("seed", "lr", "model", "prompt")}
    keys["train"] = {k: v for k, v in train_settings(params).items() if k not in NOT_IN_FINGERPRINT}
    keys["render_size"] = params["render"]["size"]
    return {"backend": backend, "params": json.loads(json.dumps(keys, sort_keys=True, default=str)), "data": data}


def prepare_checkpoints(checkpoints: Path, print_fn=print, **fingerprint_) -> str | None:
    """The checkpoint to resume from, or None; clears a folder whose fingerprint does not match."""
    checkpoints = Path(checkpoints)
    stamp = checkpoints / "fingerprint.json"
    if checkpoints.is_dir() and any(checkpoints.iterdir()):
        old = json.loads(stamp.read_text()) if stamp.exists() else None
        if old != fingerprint_:
            print_fn(f"train: {checkpoints} holds checkpoints of other settings or data; starting afresh")
            shutil.rmtree(checkpoints)
    checkpoints.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(fingerprint_, indent=1, sort_keys=True) + "\n")
    return last_complete_checkpoint(checkpoints, print_fn)


def last_complete_checkpoint(checkpoints: Path, print_fn=print) -> str | None:
    """The newest `checkpoint-N` that was saved to the end, or None.

    The Trainer writes a checkpoint's files one after another and `trainer_state.json` last, so a
    run killed while saving leaves a folder without it (or with it cut short). Such a folder is
    removed, and the run resumes from the one before. So is one without safetensors weights: the
    Trainer would load a `.bin` pickle in their place, and weights load only from safetensors.
    """
    found = []
    for path in Path(checkpoints).iterdir():
        name = path.name.split("-")
        if path.is_dir() and len(name) == 2 and name[0] == "checkpoint" and name[1].isdigit():
            found.append((int(name[1]), path))
    for _, path in sorted(found, reverse=True):
        try:
            int(json.loads((path / "trainer_state.json").read_text())["global_step"])
            if any(path.glob("*.safetensors")):
                return str(path)
            print_fn(f"train: {path} has no safetensors weights; removing it")
        except (OSError, ValueError, KeyError, TypeError):
            print_fn(f"train: {path} was not saved to the end (interrupted while saving?); removing it")
        shutil.rmtree(path)
    return None


def checkpoint_step(path: str | None) -> int:
    if path is None:
        return 0
    state = json.loads((Path(path) / "trainer_state.json").read_text())
    return int(state["global_step"])


def truncate_live(live_dir: Path, step: int) -> None:
    """Drop metric rows logged after `step` (an interrupted run's steps that are about to be redone)."""
    for tsv in (Path(live_dir) / "plots" / "metrics").rglob("*.tsv"):
        lines = tsv.read_text().splitlines()
        if not lines:
            continue
        header = lines[0].split("\t")
        col = header.index("step")
        kept = [lines[0]] + [ln for ln in lines[1:] if int(ln.split("\t")[col]) <= step]
        tsv.write_text("\n".join(kept) + "\n")


def metric_name(key: str) -> str:
    """Trainer log keys -> DVCLive names: eval_loss -> eval/loss, loss -> train/loss, train_runtime -> train/runtime."""
    if key.startswith("eval_"):
        return "eval/" + key[len("eval_"):]
    if key.startswith("train_"):
        return "train/" + key[len("train_"):]
    return "train/" + key


# Logged once at the end of training: summary values, not curves.
SUMMARY_ONLY = {"train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos", "train_loss"}


def live_callback(live):
    """A TrainerCallback writing every Trainer log to `live` at step = the optimizer step (not a log counter)."""
    from transformers import TrainerCallback

    class LiveCallback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            live.step = state.global_step
            for key, value in logs.items():
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    continue
                live.log_metric(metric_name(key), float(value), plot=key not in SUMMARY_ONLY)
            live.make_summary()

    return LiveCallback()


# ----------------------------------------------------------------------------------------------
# trainer


def trainer_class(base):
    """`base` (TRL's SFTTrainer, or Unsloth's patched one) whose evaluate() also logs the val AUROC.

    AUROC comes from scoring.score: the same one-pass P(ACCEPT) the evaluate stage uses.
    """
    from sklearn.metrics import roc_auc_score
    from transformers import Trainer

    from maskgate.prompt import gate_label
    from maskgate.model.scoring import score

    class VerifierTrainer(base):
        def __init__(self, *args, auroc_rows=None, prompt=None, max_length=None, on_score=None, **kwargs):
            super().__init__(*args, **kwargs)
            self.auroc_rows, self.prompt, self.max_len, self.on_score = auroc_rows, prompt, max_length, on_score

        def _load_optimizer_and_scheduler(self, checkpoint):
            # Several CPU processes (gloo: the data-parallel tests): transformers loads the optimizer state
            # with map_location=args.device, which accelerate names cpu:0, a location torch.load rejects
            # ("don't know how to restore data location ... cpu:0"). Map it to plain cpu. GPUs: untouched.
            import torch

            if self.args.device.type != "cpu" or self.args.world_size == 1:
                return super()._load_optimizer_and_scheduler(checkpoint)
            load = torch.load

            def cpu_load(*args, **kwargs):
                if isinstance(kwargs.get("map_location"), torch.device) and kwargs["map_location"].type == "cpu":
                    kwargs["map_location"] = "cpu"
                return load(*args, **kwargs)

            torch.load = cpu_load
            try:
                return super()._load_optimizer_and_scheduler(checkpoint)
            finally:
                torch.load = load

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            # TRL 1.15 computes the loss with a Triton kernel (its fused LM head), which has no CPU driver:
            # off CUDA, take transformers' own loss (the model's cross-entropy over the same answer labels).
            if self.args.device.type != "cuda":
                return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
            metrics = super().evaluate(eval_dataset=eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
            # AUROC of the gate's question (auto-pass or not): label 1 against every other answer
            gate_labels = [gate_label(y) for y in self.auroc_rows["label"]] if self.auroc_rows is not None else []
            if len(set(gate_labels)) == 2:
                if self.on_score:
                    self.on_score(self.model, inference=True)
                try:
                    p = score(
                        self.model, self.processing_class, self.prompt,
                        [to_example(r) for r in self.auroc_rows], self.max_len,
                        batch_size=self.args.per_device_eval_batch_size, desc="eval auroc",
                    )
                finally:
                    if self.on_score:
                        self.on_score(self.model, inference=False)
                auroc = float(roc_auc_score(gate_labels, p))
                metrics[f"{metric_key_prefix}_auroc"] = auroc
                self.log({f"{metric_key_prefix}_auroc": auroc})
            return metrics

    return VerifierTrainer


def train(
    params: dict,
    rendered: Path,
    out_dir: Path,
    checkpoints: Path,
    live_dir: Path,
    backend: str | None = None,
    callbacks: list | None = None,
) -> dict:
    """Train a LoRA adapter on the rendered train shards; return a summary (JSON-able).

    Writes `out_dir/adapter` (peft, safetensors) and, for the tiny preset, the base model it sits on
    in `out_dir/base`. Checkpoints go to `checkpoints/` (resumed from when present and made with the
    same settings and data); curves to `live_dir` (DVCLive, no dvc.yaml written).
    `backend`: from resolve_backend(params) (called here when None). `callbacks`: extra TrainerCallbacks.
    """
    backend = backend or resolve_backend(params)
    cfg = train_settings(params)
    import torch

    if cfg["cpu_threads"] and not torch.cuda.is_available():
        torch.set_num_threads(int(cfg["cpu_threads"]))
    from dvclive import Live
    from trl import SFTConfig, SFTTrainer

    from maskgate.model import qwen as M
    from maskgate.prompt import Prompt

    out_dir, checkpoints, live_dir = Path(out_dir), Path(checkpoints), Path(live_dir)
    prompt = Prompt.from_params(params)
    world = world_size()
    accum = gradient_accumulation(cfg["batch_size"], cfg["micro_batch_size"], world)
    seq_len = max_length(params, cfg)
    seed = int(params["seed"])
    preset = params["model"]["preset"]

    cuda = torch.cuda.is_available()
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda else "cpu"
    train_ds = load_split(rendered, "train")
    val_ds = load_split(rendered, "val")
    check_prompt(train_ds, prompt, "train")
    check_prompt(val_ds, prompt, "val")
    n_eval = min(int(cfg["eval_examples"]), len(val_ds))
    eval_ds = val_ds.shuffle(seed=seed).select(range(n_eval)) if n_eval else None
    auroc_rows = eval_ds.select_columns(["example_id", "query", "label", "label_text", "overlay"]) if n_eval else None

    steps_per_epoch = max(1, math.ceil(len(train_ds) / (cfg["micro_batch_size"] * world)) // accum)
    eval_steps = int(cfg["eval_steps"])
    args = SFTConfig(
        output_dir=str(checkpoints),
        per_device_train_batch_size=cfg["micro_batch_size"],
        per_device_eval_batch_size=cfg["micro_batch_size"],
        gradient_accumulation_steps=accum,
        num_train_epochs=cfg["epochs"],
        learning_rate=float(params["lr"]),
        lr_scheduler_type=cfg["lr_scheduler"],
        warmup_steps=float(cfg["warmup_ratio"]),  # transformers 5: a float < 1 is a share of the steps
        weight_decay=float(cfg["weight_decay"]),
        max_grad_norm=float(cfg["max_grad_norm"]),  # 0 = no clipping
        optim="adamw_torch_fused" if cuda else "adamw_torch",
        bf16=cuda,
        use_cpu=not cuda,  # also what lets accelerate run CPU processes data-parallel (gloo)
        gradient_checkpointing=_checkpointing(cfg, preset) and backend == "hf",
        gradient_checkpointing_kwargs={"use_reentrant": False},
        # data-parallel: every batch runs every layer (each example has an image), so each trainable
        # parameter gets a gradient; the Trainer's default for peft (True) costs a graph walk per backward
        ddp_find_unused_parameters=False,
        seed=seed,
        data_seed=seed,
        logging_steps=cfg["logging_steps"],
        logging_first_step=True,
        save_strategy="steps",
        save_steps=cfg["save_steps"],
        save_total_limit=cfg["keep_checkpoints"],
        eval_strategy="steps" if n_eval else "no",
        eval_steps=eval_steps if eval_steps > 0 else steps_per_epoch * cfg["epochs"],
        report_to="none",
        dataloader_num_workers=cfg["dataloader_workers"],
        dataloader_pin_memory=cuda,
        # our collator does the whole job: keep the raw columns, skip TRL's tokenising, never truncate
        remove_unused_columns=False,
        dataset_text_field="",
        dataset_kwargs={"skip_prepare_dataset": True},
        max_length=None,
        completion_only_loss=None,
        packing=False,
    )
    main = args.process_index == 0

    # Under torchrun the main process clears stale checkpoints and builds a local base first; the others
    # then find both ready.
    with args.main_process_first(local=False, desc="checkpoints"):
        resume = prepare_checkpoints(checkpoints, **fingerprint(params, rendered, backend))
    resumed_at = checkpoint_step(resume)
    if resume and main:
        truncate_live(live_dir, resumed_at)
        print(f"train: resuming from {resume} (step {resumed_at})")
    out_dir.mkdir(parents=True, exist_ok=True)
    with args.main_process_first(local=False, desc="base model"):
        base = resolve_base(params, cfg, backend, out_dir, device)
        hub_processor = M.load_processor(base.src, base.revision)  # the files evaluate and the gate will load
        check_lengths(hub_processor, prompt, {"train": train_ds, "val": val_ds}, seq_len,
                      M.image_token_count(int(params["render"]["size"])))
        model, processor = load_model(params, cfg, backend, base, device)
    tokens = M.prompt_tokens(processor, prompt)
    if tokens != M.prompt_tokens(hub_processor, prompt):
        raise ValueError(f"the {backend} backend's tokenizer gives another prompt than the one {base.src} ships: "
                         "evaluate and the gate would score another prompt than training saw")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())

    live = Live(str(live_dir), resume=bool(resume), dvcyaml=False, save_dvc_exp=False) if main else None
    on_score = None
    if backend == "unsloth":
        from unsloth import FastVisionModel

        def on_score(m, inference):
            (FastVisionModel.for_inference if inference else FastVisionModel.for_training)(m)

    trainer = trainer_class(SFTTrainer)(
        model=model,
        args=args,
        data_collator=Collator(processor, prompt, seq_len),
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=processor,
        callbacks=[*([live_callback(live)] if live else []), *(callbacks or [])],
        auroc_rows=auroc_rows,
        prompt=prompt,
        max_length=seq_len,
        on_score=on_score,
    )
    started = time.time()
    result = trainer.train(resume_from_checkpoint=resume)
    wall = time.time() - started
    adapter = out_dir / "adapter"
    if trainer.is_world_process_zero():
        if adapter.exists():
            shutil.rmtree(adapter)
        trainer.model.save_pretrained(str(adapter), safe_serialization=True)
    trainer.accelerator.wait_for_everyone()  # data-parallel: no rank returns before the adapter is written
    if live:
        live.end()

    last_eval = next((h for h in reversed(trainer.state.log_history) if "eval_loss" in h), {})
    last_auroc = next((h["eval_auroc"] for h in reversed(trainer.state.log_history) if "eval_auroc" in h), None)
    return {
        "backend": backend,
        "preset": preset,
        "base": base.src,
        "base_model": base.record(),
        "prompt_tokens": tokens,
        "adapter": str(adapter),
        "examples": {"train": len(train_ds), "val": len(val_ds), "eval_subset": n_eval},
        "batch": {"effective": cfg["batch_size"], "micro": cfg["micro_batch_size"], "accumulation": accum, "world": world},
        "max_length": seq_len,
        "global_step": int(trainer.state.global_step),
        "max_steps": int(trainer.state.max_steps),
        "resumed_from_step": resumed_at,
        "train_loss": float(result.training_loss),
        "eval_loss": last_eval.get("eval_loss"),
        "eval_auroc": last_auroc,
        "params": {"trainable": int(trainable), "total": int(total)},
        "wall_s": round(wall, 1),
        "examples_per_s": round(int(trainer.state.global_step - resumed_at) * cfg["batch_size"] / wall, 2) if wall else None,
        "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1) if cuda else None,
    }

"""Train the verifier: LoRA on Qwen3-VL with TRL's SFTTrainer, answer-only loss, resumable, DVCLive curves.

Two backends run the same loop (same dataset, same collator, same Trainer subclass):

* ``hf``: transformers + peft. The CPU path (tests, demo) and a plain GPU path.
* ``unsloth``: Unsloth's ``FastVisionModel`` (16-bit LoRA or 4-bit QLoRA), faster on one GPU
  (docs/benchmarks.md). Only on a machine with CUDA.

Which one runs is ``backend.resolve_backend`` (it also holds the import-order rule); the base model
and its LoRA are ``base``; resume is ``checkpoints``; the curves are ``curves``. This module reads top
to bottom: the job's settings, the data, the Trainer subclass, then ``train``.

Why our own collator (``batching.training_batch``) rather than TRL's or Unsloth's: it puts the loss
on the answer token(s) only and checks lengths instead of truncating (TRL's default
``max_length=1024`` cuts sequences, and a cut through the image tokens or the answer is silent
damage). ``train.max_text_tokens`` budgets the text (prompt text + answer); the image tokens of a
``render.size`` image are added on top, so changing the render size never needs a second knob.

The loss is the mean cross-entropy of the answer token(s), from the logits of the answer positions only
(``answer_loss``): the same on every backend and device, and no [batch, positions, vocabulary] logits.
"""
from __future__ import annotations

import hashlib
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from maskgate.config import Model, Params, ParamsError, Train
from maskgate.model.backend import resolve_backend, world_size
from maskgate.model.base import gradient_checkpointing, load_model, resolve_base
from maskgate.model.checkpoints import checkpoint_step, fingerprint, prepare_checkpoints, truncate_live
from maskgate.model.curves import live_callback
from maskgate.prompt import Prompt


@dataclass(frozen=True)
class TrainJob:
    """What the train stage reads from params.yaml: every setting that can change the adapter."""

    seed: int
    lr: float
    train: Train
    model: Model
    prompt: Prompt
    image_size: int  # render.size: the image tokens of each example

    @classmethod
    def of(cls, p: Params) -> "TrainJob":
        return cls(seed=p.seed, lr=p.lr, train=p.train, model=p.model, prompt=p.prompt, image_size=p.render.size)

    @property
    def max_length(self) -> int:
        """Total token budget of one training sequence: text budget + the image tokens of render.size."""
        from maskgate.model.qwen import image_token_count  # torch + transformers, once the backend is chosen

        return self.train.max_text_tokens + image_token_count(self.image_size)


def gradient_accumulation(batch_size: int, micro_batch_size: int, world: int = 1) -> int:
    """Steps to accumulate so that micro_batch_size x steps x world == batch_size; ParamsError if impossible."""
    per_step = micro_batch_size * world
    if batch_size % per_step:
        raise ParamsError(
            f"train.batch_size {batch_size} (effective batch) is not a multiple of train.micro_batch_size "
            f"{micro_batch_size} x world size {world} = {per_step}"
        )
    return batch_size // per_step


def eval_every(cfg: Train, examples: int, micro: int, world: int) -> int:
    """Optimizer steps between eval points: train.eval_steps, or 0 = once, at the end."""
    accum = gradient_accumulation(cfg.batch_size, micro, world)
    steps_per_epoch = max(1, math.ceil(examples / (micro * world)) // accum)
    return cfg.eval_steps if cfg.eval_steps > 0 else steps_per_epoch * cfg.epochs


def set_micro_batch(args, cfg: Train, micro: int, examples: int, world: int) -> int:
    """The Trainer's settings for micro-batch `micro` (auto's answer, known once the model is loaded); the accumulation.

    The arguments are made before the model loads (their main_process_first orders the processes that load
    it), so auto's micro-batch is set on them afterwards, before the Trainer reads them.
    """
    accum = gradient_accumulation(cfg.batch_size, micro, world)
    args.per_device_train_batch_size = args.per_device_eval_batch_size = micro
    args.gradient_accumulation_steps = accum
    args.eval_steps = eval_every(cfg, examples, micro, world)
    return accum


# ----------------------------------------------------------------------------------------------
# data


KEEP_COLUMNS = ["example_id", "query", "label", "label_text", "system", "user", "overlay"]
ROW = "shard_row"  # a split's hidden column: the row's position in its shards, through which the overlay is read


class WithOverlay:
    """The dataset's format transform: each batch of rows gets its overlays, read from the shards by `ROW`.

    A batch without the `ROW` column (columns selected without it, e.g. by check_prompt) is returned as it
    is, so reading the text columns never touches the overlays."""

    def __init__(self, shards):
        self.shards = shards

    def __call__(self, batch: dict) -> dict:
        if ROW not in batch:
            return batch
        rows = batch.pop(ROW)
        batch["overlay"] = self.shards.take(rows, ["overlay"]).column("overlay").to_pylist()
        return batch


def load_split(rendered: Path, split: str):
    """The render stage's `{split}-*.parquet` shards as a `datasets.Dataset` of KEEP_COLUMNS, read in place.

    No copy is written anywhere (`datasets.load_dataset("parquet")` would write an Arrow copy of the
    overlays into the datasets cache for every re-render and every queued experiment, the size of the
    shards each time: tables.RowGroups). The small columns are held in memory (a few hundred bytes a
    row); the overlays are read from the shards, one row group per lookup, when a row is taken. Rows
    come in shard order, so `shuffle(seed=...)`, `select` and the Trainer's sampler see what
    `load_dataset` gave (tests/test_training.py compares both).
    """
    import pyarrow as pa
    from datasets import Dataset
    from datasets.table import InMemoryTable

    from maskgate.utils import tables

    files = sorted(Path(rendered).glob(f"{split}-*.parquet"))
    if not files:
        raise FileNotFoundError(f"no {split}-*.parquet shards in {rendered}; run the render stage first")
    shards = tables.RowGroups(files)  # opens each file: a shard cut short is an error naming it
    small = shards.read([c for c in KEEP_COLUMNS if c != "overlay"])
    small = small.append_column(ROW, pa.array(range(len(shards)), pa.int64()))
    # A fingerprint of the files, as datasets gives files it loads (path and modification time): without one,
    # Dataset() hashes the table by pickling it, which peaked at 3.6 GB for the 450,000-row train split.
    stamp = "".join(f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns};" for p in files)
    ds = Dataset(InMemoryTable(small), fingerprint=hashlib.sha256(f"{split};{stamp}".encode()).hexdigest()[:16])
    ds.set_transform(WithOverlay(shards))
    return ds


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


class Collator:
    """Shard rows -> a training batch: answer-only labels, length check, no truncation (batching.training_batch),
    and the positions whose logits the loss reads (answer_loss.positions).

    With `ahead` (scoring.Ahead) each batch also carries the language model's position ids and the vision
    tower's tables, made here on the CPU (in the loader's workers) by the library's own functions, so the
    model skips its per-row rope-index loop and per-image table loop on the GPU: the same values, so the
    same losses (tests/test_training.py)."""

    def __init__(self, processor, prompt, max_length: int, ahead=None):
        self.processor, self.prompt, self.max_length, self.ahead = processor, prompt, max_length, ahead

    def __call__(self, rows: list[dict]):
        from maskgate.model import answer_loss  # torch: once the backend is chosen
        from maskgate.model.batching import to_example, training_batch

        batch = answer_loss.with_positions(
            training_batch(self.processor, self.prompt, [to_example(r) for r in rows], self.max_length))
        return batch if self.ahead is None else self.ahead(batch)


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


# ----------------------------------------------------------------------------------------------
# trainer


def trainer_class(base):
    """`base` (TRL's SFTTrainer, or Unsloth's patched one) whose evaluate() also logs the val AUROC.

    AUROC comes from scoring.score: the same one-pass P(ACCEPT) the evaluate stage uses.
    """
    from sklearn.metrics import roc_auc_score

    from maskgate.model import answer_loss
    from maskgate.model.batching import to_example
    from maskgate.model.scoring import score
    from maskgate.prompt import gate_label

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
            # Not the library's loss: it made every position's logits on the Unsloth path (answer_loss.py says why).
            # The rest is Trainer.compute_loss's: with num_items_in_batch the loss is already a share of the
            # accumulated batch, scaled back up by the processes that average the gradients.
            loss, outputs = answer_loss.loss(model, inputs, num_items_in_batch)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes
            return (loss, outputs) if return_outputs else loss

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
    job: TrainJob,
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
    `backend`: from resolve_backend (called here when None). `callbacks`: extra TrainerCallbacks.
    """
    cfg = job.train
    backend = backend or resolve_backend(cfg, job.model.preset)
    import torch

    if cfg.cpu_threads and not torch.cuda.is_available():
        torch.set_num_threads(cfg.cpu_threads)
    from dvclive import Live
    from trl import SFTConfig, SFTTrainer

    from maskgate.model import qwen as M
    from maskgate.model.scoring import Ahead

    out_dir, checkpoints, live_dir = Path(out_dir), Path(checkpoints), Path(live_dir)
    prompt, seed, preset = job.prompt, job.seed, job.model.preset
    world = world_size()
    # auto: 1 until the model is loaded and the largest micro-batch that fits is known (set_micro_batch)
    micro = 1 if cfg.micro_batch_size == "auto" else cfg.micro_batch_size
    accum = gradient_accumulation(cfg.batch_size, micro, world)
    seq_len = job.max_length

    cuda = torch.cuda.is_available()
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda else "cpu"
    train_ds = load_split(rendered, "train")
    val_ds = load_split(rendered, "val")
    check_prompt(train_ds, prompt, "train")
    check_prompt(val_ds, prompt, "val")
    n_eval = min(cfg.eval_examples, len(val_ds))
    eval_ds = val_ds.shuffle(seed=seed).select(range(n_eval)) if n_eval else None
    auroc_rows = eval_ds.select_columns(["example_id", "query", "label", "label_text", ROW]) if n_eval else None

    args = SFTConfig(
        output_dir=str(checkpoints),
        per_device_train_batch_size=micro,
        per_device_eval_batch_size=micro,
        gradient_accumulation_steps=accum,
        num_train_epochs=cfg.epochs,
        learning_rate=job.lr,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float < 1 is a share of the steps
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,  # 0 = no clipping
        optim="adamw_torch_fused" if cuda else "adamw_torch",
        bf16=cuda,
        use_cpu=not cuda,  # also what lets accelerate run CPU processes data-parallel (gloo)
        gradient_checkpointing=gradient_checkpointing(cfg, preset) and backend == "hf",
        gradient_checkpointing_kwargs={"use_reentrant": False},
        # data-parallel: every batch runs every layer (each example has an image), so each trainable
        # parameter gets a gradient; the Trainer's default for peft (True) costs a graph walk per backward
        ddp_find_unused_parameters=False,
        seed=seed,
        data_seed=seed,
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.keep_checkpoints,
        eval_strategy="steps" if n_eval else "no",
        eval_steps=eval_every(cfg, len(train_ds), micro, world),
        report_to="none",
        dataloader_num_workers=cfg.dataloader_workers,
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
        resume = prepare_checkpoints(checkpoints, **fingerprint(job, rendered, backend))
    resumed_at = checkpoint_step(resume)
    if resume and main:
        truncate_live(live_dir, resumed_at)
        print(f"train: resuming from {resume} (step {resumed_at})")
    out_dir.mkdir(parents=True, exist_ok=True)
    with args.main_process_first(local=False, desc="base model"):
        base = resolve_base(job.model, cfg, backend, prompt, seed, out_dir, device)
        hub_processor = M.load_processor(base.src, base.revision)  # the files evaluate and the gate will load
        check_lengths(hub_processor, prompt, {"train": train_ds, "val": val_ds}, seq_len,
                      M.image_token_count(job.image_size))
        model, processor = load_model(cfg, preset, seed, backend, base, device)
    if cfg.micro_batch_size == "auto":
        from maskgate.model.autobatch import training_micro_batch

        micro = training_micro_batch(
            model, processor, prompt, job.image_size, seq_len, cfg.batch_size // world,
            {"backend": backend, "base": base.record(), "lora": cfg.lora, "load_in_4bit": cfg.load_in_4bit,
             "gradient_checkpointing": gradient_checkpointing(cfg, preset), "batched_vision": cfg.batched_vision},
            "train", print_fn=print if main else (lambda *_: None))
        accum = set_micro_batch(args, cfg, micro, len(train_ds), world)
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
        data_collator=Collator(processor, prompt, seq_len, ahead=Ahead(model)),
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
        "batch": {"effective": cfg.batch_size, "micro": micro, "accumulation": accum, "world": world},
        "max_length": seq_len,
        "global_step": int(trainer.state.global_step),
        "max_steps": int(trainer.state.max_steps),
        "resumed_from_step": resumed_at,
        "train_loss": float(result.training_loss),
        "eval_loss": last_eval.get("eval_loss"),
        "eval_auroc": last_auroc,
        "params": {"trainable": int(trainable), "total": int(total)},
        "wall_s": round(wall, 1),
        "examples_per_s": round(int(trainer.state.global_step - resumed_at) * cfg.batch_size / wall, 2) if wall else None,
        "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1) if cuda else None,
    }


def headline(summary: dict) -> dict:
    """The numbers `dvc exp show` puts beside the params (reports/train.json); the summary holds the rest."""
    return {k: summary[k] for k in ("train_loss", "eval_loss", "eval_auroc", "examples_per_s", "global_step",
                                    "wall_s", "peak_gpu_gib")}

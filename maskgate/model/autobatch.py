"""`auto` batch sizes: the largest that fits this GPU, found once per card and setting, then remembered.

`train.micro_batch_size: auto` and `evaluate.batch_size: auto` (the gate reads evaluate's). The
fastest batch is usually the largest that fits (docs/benchmarks.md; for scoring up to 64, past which
the H200 measured no gain), and that depends on the card:
an 80 GB H100 fits 8 training examples of 617 tokens without checkpointing, a 139 GB H200 16. So the
size is measured, not guessed: from the largest candidate down, one real step on a worst-case batch
(every example as long as the token budget allows) is tried; an out-of-memory error, or a peak above
HEADROOM of the memory this process can use (the card's free memory plus what it holds already),
moves on to the next smaller one. The first that fits is written to
`$MASKGATE_CACHE/batch_sizes.json` (default ~/.cache/maskgate; on a pod, put it on the persistent
volume, docs/runpod.md) under the card's name and memory and every setting that changes memory, so the
next run on that card skips the search. A number set in params.yaml is used as it is.

Training's candidates divide the effective batch (`train.batch_size` over the GPUs), since
gradient accumulation must make it up exactly. Off CUDA there is no memory to measure: auto takes
CPU_BATCH (or the largest candidate under it), and says so.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

HEADROOM = 0.9  # share of the card a probe may peak at: room for optimizer state, fragmentation, other tensors
CPU_BATCH = 4
# Not above 64: on the H200 batch 256 fitted (45 GiB) but scored at 0.89-0.93x batch 64's rate, same run
# (docs/benchmarks.md, 2026-12-02): past 64 a larger batch only delays the first prefetched batch.
SCORING_CANDIDATES = (64, 32, 16, 8, 4, 2, 1)


def cache_file() -> Path:
    return Path(os.environ.get("MASKGATE_CACHE") or Path.home() / ".cache" / "maskgate") / "batch_sizes.json"


def card() -> str:
    import torch

    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return f"{props.name} {props.total_memory // 2**20} MiB"


def _plain(value):
    """A config dataclass (e.g. config.Lora) as its fields, for JSON."""
    import dataclasses

    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    raise TypeError(f"{type(value).__name__} is not a setting autobatch can record")


def cache_key(what: str, settings: dict) -> str:
    """The card and a digest of the settings that change memory: one remembered size per combination."""
    import torch

    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    return f"{what} | {card()} | torch {torch.__version__} | {digest}"


def remembered(key: str) -> int | None:
    try:
        return int(json.loads(cache_file().read_text())[key]["batch_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remember(key: str, size: int, settings: dict, tried: dict) -> None:
    from maskgate.utils import tables

    path = cache_file()
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    known[key] = {"batch_size": size, "settings": settings, "tried": tried}
    path.parent.mkdir(parents=True, exist_ok=True)
    tables.write_json(known, path)


def find(what: str, settings: dict, candidates, step, where: str, print_fn=print) -> int:
    """The largest of `candidates` for which `step(size)` runs within HEADROOM of the usable memory; remembered.

    `step(size)` runs one worst-case step of that size on the GPU. `settings`: what changes memory.
    """
    import torch

    candidates = sorted(set(candidates), reverse=True)
    # the sections in `settings` are config dataclasses: as JSON (what is remembered) from here on
    settings = json.loads(json.dumps(settings, sort_keys=True, default=_plain))
    if not torch.cuda.is_available():
        size = next((c for c in candidates if c <= CPU_BATCH), candidates[-1])
        print_fn(f"{where}: batch size auto on a CPU: {size} (no GPU memory to fit)")
        return size
    key = cache_key(what, settings)
    size = remembered(key)
    if size is not None and size in candidates:
        print_fn(f"{where}: batch size auto: {size}, remembered for {card()} in {cache_file()}")
        return size
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info()
    usable = free + torch.cuda.memory_reserved()  # the card's free memory and what this process holds already
    tried = {}
    for size in candidates:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        try:
            step(size)
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        except torch.OutOfMemoryError:
            tried[size] = "out of memory"
            continue
        finally:
            torch.cuda.empty_cache()
        tried[size] = f"peak {peak / 2**30:.1f} GiB"
        if peak <= HEADROOM * usable:
            remember(key, size, settings, tried)
            print_fn(f"{where}: batch size auto: {size} fits {card()} (peak {peak / 2**30:.1f} GiB; tried "
                     f"{', '.join(f'{k}: {v}' for k, v in tried.items())}); remembered in {cache_file()}")
            return size
    raise RuntimeError(f"{where}: not even a batch of {candidates[-1]} fits {card()} ({tried})")


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def worst_case_examples(processor, prompt, image_size: int, max_length: int, n: int):
    """n examples as long as the token budget allows: a noise image of the render size, a padded query."""
    import numpy as np
    from PIL import Image

    from maskgate.model.batching import Example, answer_ids, image_tokens, text_tokens

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (image_size, image_size, 3), dtype=np.uint8))
    answer = max(len(answer_ids(processor.tokenizer, a)) for a in prompt.answers)
    budget = max_length - image_tokens(processor, image) - answer
    query = "object"
    while text_tokens(processor, prompt, query + " x" * 64) <= budget:
        query += " x" * 64
    while text_tokens(processor, prompt, query + " x") <= budget:
        query += " x"
    return [Example(image=image, query=query, answer=prompt.answers[0], key=f"probe-{i}") for i in range(n)]


def scoring_batch_size(model, processor, prompt, image_size: int, max_length: int, settings: dict, where: str,
                       print_fn=print) -> int:
    """evaluate.batch_size auto: the largest scoring batch (one forward, last-position logits) that fits."""
    import torch

    from maskgate.model.batching import scoring_batch

    def step(size):
        batch = scoring_batch(processor, prompt, worst_case_examples(processor, prompt, image_size, max_length, size),
                              max_length).to(model.device)
        with torch.inference_mode():
            model(**batch, logits_to_keep=1, use_cache=False)

    memory = {**settings, "image_size": image_size, "max_length": max_length,
              "model": type(model).__name__, "params": sum(p.numel() for p in model.parameters())}
    return find("score", memory, SCORING_CANDIDATES, step, where, print_fn)


def training_micro_batch(model, processor, prompt, image_size: int, max_length: int, effective: int, settings: dict,
                         where: str, print_fn=print) -> int:
    """train.micro_batch_size auto: the largest divisor of the per-GPU effective batch whose step fits.

    The step is the Trainer's: the answer-positions loss (answer_loss) and a backward under bf16 autocast; the
    random state is put back afterwards, so a run that searched and one that remembered train alike.
    """
    import torch

    from maskgate.model import answer_loss
    from maskgate.model.batching import training_batch

    def step(size):
        batch = answer_loss.with_positions(training_batch(
            processor, prompt, worst_case_examples(processor, prompt, image_size, max_length, size), max_length))
        try:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss, _ = answer_loss.loss(model, batch.to(model.device))
            loss.backward()
        finally:
            model.zero_grad(set_to_none=True)

    cpu, cuda = torch.random.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        # "loss": sizes found while the loss made every position's logits (before answer_loss) are not reused
        memory = {**settings, "image_size": image_size, "max_length": max_length, "loss": "answer positions",
                  "params": sum(p.numel() for p in model.parameters())}
        return find("train", memory, divisors(effective), step, where, print_fn)
    finally:
        torch.random.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)

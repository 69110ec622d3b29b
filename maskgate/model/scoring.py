"""P(ACCEPT) for verifier examples from one forward pass each batch.

Why not generate(): the verifier's answer is decided by its first token, so the score is the
softmax over just the first-token logits of the answers at the answer position. With the two
answers ACCEPT and REJECT that is the sigmoid of their difference. That gives a continuous score
for ROC curves and threshold choice, costs one forward pass, and needs only the last position's
logits (`logits_to_keep=1`, left padding so the last position is the answer position in every row).

More than two answers (prompt.answers, e.g. [ACCEPT, REJECT, BORDERLINE]): the score is still the
probability of the first answer, now a softmax over the first tokens of *all* answers, so every
other answer's mass counts against ACCEPT. The gate asks one question, "auto-pass or not", and a
BORDERLINE is "not" (prompt.py: the labels and the gate's binary view of them).

If two answers began with the same token the score could not tell them apart, so that is checked
before any forward pass.
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import BatchFeature

from maskgate.model.batching import Example, answer_ids, scoring_batch
from maskgate.prompt import Prompt


def answer_first_ids(tokenizer, prompt: Prompt) -> tuple[int, ...]:
    """First token id of each answer, in prompt.answers order; ValueError if two coincide."""
    ids = tuple(answer_ids(tokenizer, answer)[0] for answer in prompt.answers)
    for i, first in enumerate(ids):
        if first in ids[:i]:
            other = prompt.answers[ids.index(first)]
            token = tokenizer.convert_ids_to_tokens(first)
            raise ValueError(
                f"answers {other!r} and {prompt.answers[i]!r} start with the same token {token!r}: "
                "their first-token logits cannot tell them apart; change prompt.answers"
            )
    return ids


def score_batch(model, processor, prompt: Prompt, examples: list[Example], max_length: int) -> np.ndarray:
    """P(ACCEPT) for one batch: one forward pass, last-position logits only. Model in eval mode."""
    return launch_batch(model, processor, prompt, examples, max_length).get()


def launch_batch(model, processor, prompt: Prompt, examples: list[Example], max_length: int,
                 overlap: "Overlap | None" = None) -> "Scores":
    """score_batch, queued: returns once the GPU has the batch's work, with a handle to its scores."""
    first_ids = list(answer_first_ids(processor.tokenizer, prompt))
    batch = scoring_batch(processor, prompt, examples, max_length)
    if overlap is None:
        return launch(model, batch.to(model.device), first_ids)
    return launch(model, overlap.to_device(overlap.prepare(batch)), first_ids)


def p_accept(model, batch, first_ids: list[int]) -> np.ndarray:
    """P(ACCEPT) of a prepared scoring batch (scoring_batch's output)."""
    return launch(model, batch.to(model.device), first_ids).get()


class Scores:
    """One batch's P(ACCEPT), queued on the GPU and copied back as it ends; get() waits for it alone.

    The copy back is queued right behind the batch (into pinned memory, non-blocking) with an event after
    it, so waiting for these scores does not wait for a batch queued later, as `.cpu()` then would.
    """

    def __init__(self, p: torch.Tensor):
        self._done = None
        if p.is_cuda:
            p, self._done = p.to("cpu", non_blocking=True), torch.cuda.Event()
            self._done.record()
        self._host = p

    def get(self) -> np.ndarray:
        if self._done is not None:
            self._done.synchronize()
        return self._host.numpy().astype(np.float64)


@torch.inference_mode()
def launch(model, batch, first_ids: list[int]) -> Scores:
    """Queue one forward pass of a batch already on the model's device; its Scores."""
    logits = model(**batch, logits_to_keep=1, use_cache=False).logits[:, -1, first_ids]
    return Scores(torch.softmax(logits.float(), dim=-1)[:, 0])


class RopeIndex:
    """The language model's 3-D rotary position ids of a batch, by the library's own Qwen3VLModel.get_rope_index.

    The model computes them at the start of each forward, on the GPU, in a Python loop over the rows with a
    GPU-to-CPU read in each (the GPU idles meanwhile); here they are made with the batch, on the CPU, ahead.
    Only the config is kept (get_rope_index reads nothing else of the model), so this pickles for workers.
    """

    def __init__(self, model):
        inner = next((m for m in model.modules() if type(m).__name__ == "Qwen3VLModel"), None)
        if inner is None:
            raise ValueError("position ids made ahead: found no Qwen3VLModel in the model")
        self.config, self._cls = inner.config, type(inner)

    def get_vision_position_ids(self, *args, **kwargs):
        return self._cls.get_vision_position_ids(self, *args, **kwargs)

    def __call__(self, batch) -> torch.Tensor:
        position_ids, _ = self._cls.get_rope_index(
            self, batch["input_ids"], mm_token_type_ids=batch["mm_token_type_ids"],
            image_grid_thw=batch["image_grid_thw"], attention_mask=batch["attention_mask"])
        return position_ids


class VisionTables:
    """The vision tower's per-patch tables of a batch, made on the CPU by the library's own functions.

    The tower builds them at the start of its forward from `image_grid_thw` on the GPU: the patch position
    ids in a Python loop over the images after a GPU-to-CPU read, the position-embedding interpolation after
    another (an arange of a GPU sum), so the GPU idles at the start of every batch while the CPU queues the
    little kernels. Made here with the batch (transformers.vision_utils, the functions the tower calls), they
    go in as the `image_*` inputs its get_image_features accepts in their place (accepts_precomputed_kwargs).
    The cut points stay on the CPU when the attention is not flash's: the per-image path only lists them and
    the batched one (vision.py) only counts them, so neither reads the GPU. Plain numbers: pickles for workers.
    """

    def __init__(self, model):
        tower = next((m for m in model.modules() if type(m).__name__ == "Qwen3VLVisionModel"), None)
        if tower is None:
            raise ValueError("vision tables made ahead: found no Qwen3VLVisionModel in the model")
        from transformers.utils.generic import is_flash_attention_requested

        self.merge, self.side = tower.spatial_merge_size, tower.num_grid_per_side
        self.mode, self.align_corners = tower.interpolation_mode, tower.interpolation_align_corners
        self.cuts_on_cpu = not is_flash_attention_requested(tower.config)

    def __call__(self, grid_thw: torch.Tensor) -> dict:
        from transformers import vision_utils as V

        indices, weights = V.get_vision_interpolation_indices_and_weights(
            grid_thw, num_grid_per_side=self.side, mode=self.mode, align_corners=self.align_corners,
            spatial_merge_size=self.merge)
        return {"image_cu_seqlens": V.get_vision_cu_seqlens(grid_thw),
                "image_position_ids": V.get_vision_position_ids(grid_thw, self.merge),
                "image_interp_indices": indices, "image_interp_weights": weights}


class Ahead:
    """The position ids and vision tables of a batch, made on the CPU ahead of the GPU: by Overlap.prepare (the
    prefetch thread or a worker) in scoring, by the training collator (the loader's workers) in training."""

    def __init__(self, model):
        self.rope, self.vision = RopeIndex(model), VisionTables(model)

    def __call__(self, batch):
        batch["position_ids"] = self.rope(batch)
        batch.update(self.vision(batch["image_grid_thw"]))
        return batch


class Overlap:
    """evaluate.overlap: the GPU never waits for the CPU between batches; the scores are the same.

    Each batch comes with its position ids (RopeIndex) and the vision tower's tables (VisionTables) and in
    pinned memory, is copied to the GPU on a side stream while the batch before still runs, and its scores are
    read back only after the next batch is queued: the per-batch wait for the scores, the pageable copy, the
    rope-index loop and the tower's table loops leave the GPU's path.
    """

    def __init__(self, model):
        self.ahead = Ahead(model)
        self.device = model.device
        self.cuda = torch.device(self.device).type == "cuda"
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.on_cpu = {"image_cu_seqlens"} if self.ahead.vision.cuts_on_cpu else set()

    def prepare(self, batch):
        """On the CPU, in the prefetch thread or in turn: the ids and tables added, the tensors pinned."""
        batch = self.ahead(batch)
        return BatchFeature({k: v.pin_memory() for k, v in batch.items()}) if self.cuda else batch

    def to_device(self, batch):
        """The batch on the GPU, copied on the side stream; the current stream waits for the copy, not the CPU."""
        if not self.cuda:
            return batch.to(self.device)
        with torch.cuda.stream(self.stream):
            moved = {k: v.to(self.device, non_blocking=True) for k, v in batch.items() if k not in self.on_cpu}
        current = torch.cuda.current_stream(self.device)
        current.wait_stream(self.stream)
        for v in moved.values():  # the copies' memory belongs to the stream that uses it from now on
            v.record_stream(current)
        return moved | {k: batch[k] for k in self.on_cpu if k in batch}


def batches(processor, prompt: Prompt, examples: list[Example], max_length: int, batch_size: int, workers: int = 0,
            prefetch: bool = False, overlap: Overlap | None = None):
    """scoring_batch of each run of batch_size examples, in order.

    Image preprocessing and tokenising take about 5 ms per 672 px example on a CPU core (0.31 s per
    batch of 64 on the H200 machine), in series with the GPU unless made ahead:
    workers > 0: by that many DataLoader worker processes; prefetch (workers 0): the next batch in a
    thread while the caller runs this one (the processor's work is mostly numpy and torch, which let
    the thread run beside the GPU's launches). overlap: each batch also gets Overlap.prepare there.
    """
    starts = range(0, len(examples), batch_size)

    def make(start):
        batch = scoring_batch(processor, prompt, examples[start : start + batch_size], max_length)
        return overlap.prepare(batch) if overlap else batch

    if workers > 0:
        from functools import partial

        from torch.utils.data import DataLoader

        # the workers get the ids and tables' makers alone (plain numbers): the side stream stays in this process
        collate = partial(_worker_batch, processor, prompt, max_length=max_length, ahead=overlap and overlap.ahead)
        yield from DataLoader(examples, batch_size=batch_size, shuffle=False, num_workers=workers,
                              collate_fn=collate, prefetch_factor=2, pin_memory=bool(overlap and overlap.cuda))
    elif prefetch and len(starts) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="maskgate-prefetch") as pool:
            ahead = pool.submit(make, starts[0])
            for start in starts[1:]:
                batch, ahead = ahead.result(), pool.submit(make, start)
                yield batch
            yield ahead.result()
    else:
        for start in starts:
            yield make(start)


def _worker_batch(processor, prompt: Prompt, examples: list[Example], max_length: int, ahead: Ahead | None):
    batch = scoring_batch(processor, prompt, examples, max_length)
    # as Overlap.prepare, unpinned: the DataLoader pins it in the main process
    return batch if ahead is None else ahead(batch)


def score(
    model, processor, prompt: Prompt, examples: list[Example], max_length: int, batch_size: int = 8, desc: str = "scoring",
    workers: int = 0, prefetch: bool = False, overlap: bool = False,
) -> np.ndarray:
    """P(ACCEPT) for every example, in order, as float64; the model is put back in its prior mode.

    workers, prefetch: how batches are prepared ahead of the GPU (see `batches`); neither = in turn.
    overlap: no wait for the GPU between batches (`Overlap`); the same scores.
    """
    first_ids = list(answer_first_ids(processor.tokenizer, prompt))  # fail before the first batch, not inside it
    staging = Overlap(model) if overlap else None
    was_training = model.training
    model.eval()
    parts, queued = [], None
    try:
        for batch in tqdm(batches(processor, prompt, examples, max_length, batch_size, workers, prefetch, staging),
                          desc=desc, unit="batch", total=-(-len(examples) // batch_size)):
            if staging is None:
                parts.append(p_accept(model, batch, first_ids))
                continue
            p = launch(model, staging.to_device(batch), first_ids)
            if queued is not None:  # the batch before's scores, now that this one is queued behind it
                parts.append(queued.get())
            queued = p
        if queued is not None:
            parts.append(queued.get())
    finally:
        model.train(was_training)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float64)

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


@torch.inference_mode()
def score_batch(model, processor, prompt: Prompt, examples: list[Example], max_length: int) -> np.ndarray:
    """P(ACCEPT) for one batch: one forward pass, last-position logits only. Model in eval mode."""
    first_ids = list(answer_first_ids(processor.tokenizer, prompt))
    return p_accept(model, scoring_batch(processor, prompt, examples, max_length), first_ids)


@torch.inference_mode()
def p_accept(model, batch, first_ids: list[int]) -> np.ndarray:
    """P(ACCEPT) of a prepared scoring batch (scoring_batch's output)."""
    batch = batch.to(model.device)
    logits = model(**batch, logits_to_keep=1, use_cache=False).logits[:, -1, first_ids]
    return torch.softmax(logits.float(), dim=-1)[:, 0].cpu().numpy().astype(np.float64)


def batches(processor, prompt: Prompt, examples: list[Example], max_length: int, batch_size: int, workers: int = 0,
            prefetch: bool = False):
    """scoring_batch of each run of batch_size examples, in order.

    Image preprocessing and tokenising take about 5 ms per 672 px example on a CPU core (0.31 s per
    batch of 64 on the H200 machine), in series with the GPU unless made ahead:
    workers > 0: by that many DataLoader worker processes; prefetch (workers 0): the next batch in a
    thread while the caller runs this one (the processor's work is mostly numpy and torch, which let
    the thread run beside the GPU's launches).
    """
    starts = range(0, len(examples), batch_size)

    def make(start):
        return scoring_batch(processor, prompt, examples[start : start + batch_size], max_length)

    if workers > 0:
        from functools import partial

        from torch.utils.data import DataLoader

        collate = partial(scoring_batch, processor, prompt, max_length=max_length)
        yield from DataLoader(examples, batch_size=batch_size, shuffle=False, num_workers=workers,
                              collate_fn=collate, prefetch_factor=2)
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


def score(
    model, processor, prompt: Prompt, examples: list[Example], max_length: int, batch_size: int = 8, desc: str = "scoring",
    workers: int = 0, prefetch: bool = False,
) -> np.ndarray:
    """P(ACCEPT) for every example, in order, as float64; the model is put back in its prior mode.

    workers, prefetch: how batches are prepared ahead of the GPU (see `batches`); neither = in turn.
    """
    first_ids = list(answer_first_ids(processor.tokenizer, prompt))  # fail before the first batch, not inside it
    was_training = model.training
    model.eval()
    try:
        parts = [
            p_accept(model, batch, first_ids)
            for batch in tqdm(batches(processor, prompt, examples, max_length, batch_size, workers, prefetch), desc=desc,
                              unit="batch", total=-(-len(examples) // batch_size))
        ]
    finally:
        model.train(was_training)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float64)

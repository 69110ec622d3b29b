"""Examples -> Qwen3-VL model inputs, for training and for scoring, through one prompt path.

Why one path: the verifier is trained on exactly the token sequence it is scored on. Both modes
render the prompt with the chat template up to the assistant turn start
(`add_generation_prompt=True`) and run the processor on it; training then appends the answer's
tokens, so the prompt/answer boundary is exact by construction rather than found by searching.

Training supervises the answer tokens only (labels are -100 elsewhere). The closing `<|im_end|>`
is neither supervised nor fed: scoring reads only the logits at the answer position and nothing is
generated, so the end-of-turn token would spend capacity on nothing the verifier uses. Training
pads on the right; scoring pads on the left so the last position of every row is the answer position.

Why the up-front length check: a sequence cut to `max_length` loses the answer (or the image
tokens, which then no longer match the image features), so an over-long example is an error that
names the example, before any image is processed.

`mm_token_type_ids` is kept: since transformers 5.7, Qwen3-VL needs it whenever images are passed.
A Trainer takes `functools.partial(training_batch, processor, prompt, max_length=...)` as collator.
"""
from __future__ import annotations

import io
from typing import NamedTuple

import torch
from PIL import Image
from transformers import BatchFeature

from maskgate.prompt import Prompt

IGNORE_INDEX = -100  # labels with this value add nothing to the loss


class Example(NamedTuple):
    image: Image.Image
    query: str
    answer: str | None = None  # needed for training, ignored for scoring
    key: str | None = None  # names the example in errors, e.g. its row id


def prompt_text(processor, prompt: Prompt, query: str) -> str:
    """The chat-template text of the prompt, ending in the assistant turn start."""
    return processor.apply_chat_template(prompt.messages(query), add_generation_prompt=True, tokenize=False)


def answer_ids(tokenizer, answer: str) -> list[int]:
    """The answer's tokens as the assistant writes them, right after the assistant turn start."""
    return tokenizer(answer, add_special_tokens=False).input_ids


def image_tokens(processor, image: Image.Image) -> int:
    """LLM tokens the processor will give this image (after its own resizing rule)."""
    width, height = image.size
    patches = processor.image_processor.get_number_of_image_patches(height, width)
    return patches // processor.image_processor.merge_size**2


def check_lengths(processor, prompt: Prompt, examples: list[Example], max_length: int, train: bool) -> None:
    """Raise ValueError naming the first example whose sequence would exceed max_length."""
    for index, ex in enumerate(examples):
        text = text_tokens(processor, prompt, ex.query)
        image = image_tokens(processor, ex.image)
        answer = len(answer_ids(processor.tokenizer, ex.answer)) if train else 0
        if text + image + answer > max_length:
            raise _too_long(ex.key if ex.key is not None else f"#{index} of the batch", ex.query, text, image,
                            answer, max_length)


def check_texts(processor, prompt: Prompt, rows, max_length: int, image: int, desc: str = "") -> int:
    """Check (key, query, answer) rows without their images: every image has the fixed render size.

    `image`: the image tokens of one example. Each distinct query is tokenised once. Returns the rows checked.
    """
    from tqdm import tqdm

    seen: dict[str, int] = {}
    answers: dict[str, int] = {}
    n = 0
    for key, query, answer in tqdm(rows, desc=desc or "checking lengths", unit="example", disable=not desc):
        if query not in seen:
            seen[query] = text_tokens(processor, prompt, query)
        if answer not in answers:
            answers[answer] = len(answer_ids(processor.tokenizer, answer))
        total = seen[query] + image + answers[answer]
        if total > max_length:
            raise _too_long(key, query, seen[query], image, answers[answer], max_length)
        n += 1
    return n


def text_tokens(processor, prompt: Prompt, query: str) -> int:
    """Text tokens of the prompt for `query` (the image placeholder's one pad token not counted)."""
    return len(processor.tokenizer(prompt_text(processor, prompt, query)).input_ids) - 1


def _too_long(name, query: str, text: int, image: int, answer: int, max_length: int) -> ValueError:
    return ValueError(
        f"example {name} (query {query!r}) needs {text + image + answer} tokens ({text} text + {image} image + "
        f"{answer} answer) > max_length {max_length}; raise train.max_text_tokens or shrink the image"
    )


def _encode_prompts(processor, prompt: Prompt, examples: list[Example], padding_side: str) -> BatchFeature:
    texts = [prompt_text(processor, prompt, ex.query) for ex in examples]
    images = [ex.image for ex in examples]
    return processor(text=texts, images=images, padding=True, padding_side=padding_side, return_tensors="pt")


def scoring_batch(processor, prompt: Prompt, examples: list[Example], max_length: int) -> BatchFeature:
    """Left-padded prompts ending in the assistant turn start; answers are ignored."""
    check_lengths(processor, prompt, examples, max_length, train=False)
    return _encode_prompts(processor, prompt, examples, padding_side="left")


def training_batch(processor, prompt: Prompt, examples: list[Example], max_length: int) -> BatchFeature:
    """Right-padded prompt + answer sequences with `labels` on the answer tokens only."""
    missing = [ex.key if ex.key is not None else f"#{i}" for i, ex in enumerate(examples) if ex.answer is None]
    if missing:
        raise ValueError(f"training examples need an answer; missing for {missing}")
    check_lengths(processor, prompt, examples, max_length, train=True)
    enc = _encode_prompts(processor, prompt, examples, padding_side="right")
    rows = []
    for i, ex in enumerate(examples):
        n = int(enc["attention_mask"][i].sum())
        answer = torch.tensor(answer_ids(processor.tokenizer, ex.answer), dtype=enc["input_ids"].dtype)
        rows.append(
            {
                "input_ids": torch.cat([enc["input_ids"][i, :n], answer]),
                "mm_token_type_ids": torch.cat([enc["mm_token_type_ids"][i, :n], torch.zeros_like(answer)]),
                "labels": torch.cat([torch.full((n,), IGNORE_INDEX, dtype=answer.dtype), answer]),
            }
        )
    pad_values = {"input_ids": processor.tokenizer.pad_token_id, "mm_token_type_ids": 0, "labels": IGNORE_INDEX}
    batch = {key: _pad_right([row[key] for row in rows], value) for key, value in pad_values.items()}
    batch["attention_mask"] = _pad_right([torch.ones_like(row["input_ids"]) for row in rows], 0)
    batch["pixel_values"] = enc["pixel_values"]
    batch["image_grid_thw"] = enc["image_grid_thw"]
    return BatchFeature(batch)


def _pad_right(rows: list[torch.Tensor], value: int) -> torch.Tensor:
    return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=value)


def to_example(row: dict) -> Example:
    """A rendered shard row -> an Example (the overlay JPEG decoded): train, evaluate and the gate all decode so."""
    image = Image.open(io.BytesIO(row["overlay"]))
    image.load()
    return Example(image=image.convert("RGB"), query=row["query"], answer=row["label_text"], key=row["example_id"])

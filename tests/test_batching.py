"""Training and scoring batches: answer-only labels, kept mm_token_type_ids, padding sides, length check."""
import numpy as np
import pytest
import torch
from PIL import Image

from maskgate.model import qwen as M
from maskgate.model.batching import IGNORE_INDEX, Example, check_lengths, prompt_text, scoring_batch, training_batch


@pytest.fixture(scope="module")
def tiny(tiny_qwen3vl_dir):
    return M.load(tiny_qwen3vl_dir)


def noise_image(size, seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


@pytest.fixture
def examples():
    return [
        Example(noise_image(64, 0), "red car", "ACCEPT", key="r0"),
        Example(noise_image(64, 1), "the two people on the far left holding umbrellas", "REJECT", key="r1"),
        Example(noise_image(96, 2), "dog", "REJECT", key="r2"),
    ]


def test_labels_cover_only_the_answer(tiny, verifier_prompt, examples):
    _, processor = tiny
    batch = training_batch(processor, verifier_prompt, examples, max_length=200)
    for row, ex in zip(batch["labels"], examples):
        kept = row[row != IGNORE_INDEX]
        assert processor.tokenizer.decode(kept) == ex.answer
    # right padding: each row's real tokens come first, labels sit right after the prompt
    assert (batch["attention_mask"][:, 0] == 1).all()
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()


def test_training_sequence_is_the_chat_template_with_the_answer(tiny, verifier_prompt, examples):
    """Appending answer tokens equals tokenizing the full conversation, up to the closing <|im_end|>."""
    _, processor = tiny
    batch = training_batch(processor, verifier_prompt, examples, max_length=200)
    for i, ex in enumerate(examples):
        text = processor.apply_chat_template(verifier_prompt.messages(ex.query, ex.answer), tokenize=False)
        full = processor(text=[text], images=[ex.image], return_tensors="pt")["input_ids"][0]
        ours = batch["input_ids"][i][batch["attention_mask"][i] == 1]
        assert full[: len(ours)].tolist() == ours.tolist()
        assert processor.tokenizer.convert_ids_to_tokens(full[len(ours) :].tolist()) == ["<|im_end|>", "Ċ"]


def test_batches_keep_mm_token_type_ids(tiny, verifier_prompt, examples):
    model, processor = tiny
    train = training_batch(processor, verifier_prompt, examples, max_length=200)
    score = scoring_batch(processor, verifier_prompt, examples, max_length=200)
    for batch in (train, score):
        image_positions = batch["input_ids"] == model.config.image_token_id
        assert torch.equal(batch["mm_token_type_ids"] == 1, image_positions)
        assert image_positions.sum() == sum(M.image_token_count(ex.image.size[0]) for ex in examples)
    loss = model(**train).loss
    assert torch.isfinite(loss)


def test_scoring_batch_is_left_padded_and_ends_in_the_assistant_turn(tiny, verifier_prompt, examples):
    _, processor = tiny
    batch = scoring_batch(processor, verifier_prompt, examples, max_length=200)
    assert "labels" not in batch
    assert (batch["attention_mask"][:, -1] == 1).all()
    assert batch["attention_mask"][:, 0].tolist() != [1, 1, 1]  # someone is padded, on the left
    tail = processor.tokenizer.convert_ids_to_tokens(batch["input_ids"][0, -3:].tolist())
    assert tail == ["<|im_start|>", "assistant", "Ċ"]
    assert prompt_text(processor, verifier_prompt, "x").endswith("<|im_start|>assistant\n")


def test_too_long_example_raises_naming_it(tiny, verifier_prompt, examples):
    _, processor = tiny
    lengths = training_batch(processor, verifier_prompt, examples, max_length=200)["attention_mask"].sum(1)
    longest = int(lengths.max())  # the long query r1 (its 64 px image gives 4 image tokens)
    training_batch(processor, verifier_prompt, examples, max_length=longest)  # exactly fits
    with pytest.raises(ValueError, match=r"example r1 .*> max_length"):
        training_batch(processor, verifier_prompt, examples, max_length=longest - 1)
    # scoring has no answer token: one fewer is needed
    scoring_batch(processor, verifier_prompt, examples, max_length=longest - 1)
    with pytest.raises(ValueError, match=r"#0 of the batch .*9 image"):
        check_lengths(processor, verifier_prompt, [Example(noise_image(96, 0), "dog")], max_length=20, train=False)


def test_training_needs_answers(tiny, verifier_prompt):
    _, processor = tiny
    with pytest.raises(ValueError, match="need an answer"):
        training_batch(processor, verifier_prompt, [Example(noise_image(64, 0), "dog", key="x")], max_length=200)

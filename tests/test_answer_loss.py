"""The answer-positions loss equals the model's own loss from every position's logits: value and gradients."""
import copy

import pytest
import torch

from maskgate.model import answer_loss
from maskgate.model import qwen as M
from maskgate.model.batching import IGNORE_INDEX, Example, training_batch
from tests.test_scoring import noise_image, spread


@pytest.fixture(scope="module")
def model_and_batch(tiny_qwen3vl_dir, verifier_prompt):
    """The spread tiny model and a right-padded batch of rows of different lengths; row 1's answer made 2 tokens long."""
    model, processor = M.load(tiny_qwen3vl_dir)
    model = spread(model)
    examples = [Example(noise_image(32 + 32 * (i % 2), seed=i), "thing" + " big" * (4 * i), verifier_prompt.answers[i % 2],
                        key=f"e{i}") for i in range(3)]
    batch = training_batch(processor, verifier_prompt, examples, max_length=10_000)
    # a two-token answer: the token before row 1's answer is supervised too (the loss must not assume one token)
    row = batch["labels"][1]
    first = int((row != IGNORE_INDEX).nonzero()[0])
    row[first - 1] = batch["input_ids"][1, first - 1]
    return model, batch


def test_positions_are_every_rows_label_positions_less_one():
    labels = torch.full((3, 9), IGNORE_INDEX)
    labels[0, 4], labels[1, 6:8], labels[2, 8] = 5, 6, 7
    assert answer_loss.positions(labels).tolist() == [3, 5, 6, 7]


@pytest.mark.parametrize("num_items", [None, 7])
def test_loss_and_gradients_equal_the_models_own(model_and_batch, num_items):
    model, batch = model_and_batch
    kept = answer_loss.positions(batch["labels"])
    assert len(kept) == 4 < batch["input_ids"].shape[1] // 4  # few positions: that is the saving

    full_model, ours_model = copy.deepcopy(model), copy.deepcopy(model)
    extra = {} if num_items is None else {"num_items_in_batch": torch.tensor(num_items)}
    full = full_model(**batch, **extra).loss
    full.backward()
    ours, outputs = answer_loss.loss(ours_model, {**batch, answer_loss.KEY: kept}, extra.get("num_items_in_batch"))
    ours.backward()

    assert outputs.logits.shape[:2] == (3, 4)
    torch.testing.assert_close(ours, full, rtol=1e-5, atol=1e-6)
    grads = [(name, p.grad, q.grad) for (name, p), q in zip(full_model.named_parameters(), ours_model.parameters())
             if p.grad is not None]
    assert len(grads) > 10
    for name, a, b in grads:
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=name)

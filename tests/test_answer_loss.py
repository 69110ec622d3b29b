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


def equal_lengths(processor, prompt, answer_tokens):
    """Rows of one length (no padding: the model passes no mask, sdpa would take its causal flag), answers of
    1 or 2 tokens: one kept position that is not the last, or two."""
    examples = [Example(noise_image(64, seed=i), "thing big", prompt.answers[i % 2]) for i in range(3)]
    batch = training_batch(processor, prompt, examples, max_length=10_000)
    assert bool(batch["attention_mask"].all())
    if answer_tokens == 2:
        last = batch["labels"].shape[1] - 1
        batch["labels"][:, last - 1] = batch["input_ids"][:, last - 1]
    assert len(answer_loss.positions(batch["labels"])) == answer_tokens
    return batch


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


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("answer_tokens", [None, 1, 2], ids=["padded", "one-length-1", "one-length-2"])
def test_the_last_layer_at_the_answer_positions_gives_the_same_loss_and_gradients(answer_tokens, attention,
                                                                                   model_and_batch, tiny_qwen3vl_dir,
                                                                                   verifier_prompt):
    """train.last_layer_at_answer: the last decoder layer computes only the kept positions, in training too."""
    from maskgate.model.last_layer import last_layer_at_answer
    from maskgate.model.speedups import decoder_layers

    model, batch = model_and_batch
    model = copy.deepcopy(model)
    model.set_attn_implementation(attention)
    if answer_tokens:  # rows of one length
        batch = equal_lengths(M.load(tiny_qwen3vl_dir)[1], verifier_prompt, answer_tokens)
    inputs = {**batch, answer_loss.KEY: answer_loss.positions(batch["labels"])}
    plain, fast = copy.deepcopy(model).train(), copy.deepcopy(model).train()
    assert last_layer_at_answer(fast, "test", print_fn=lambda *_: None)
    rows = []
    decoder_layers(fast)[-1].mlp.register_forward_hook(lambda m, a, out: rows.append(out.shape[1]))

    expected, _ = answer_loss.loss(plain, inputs)
    expected.backward()
    got, _ = answer_loss.loss(fast, inputs)
    got.backward()
    kept = len(inputs[answer_loss.KEY])
    assert rows == [kept] and kept < batch["input_ids"].shape[1] // 4  # the last layer's MLP ran on the kept rows
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(plain.named_parameters(), fast.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)

    fast(**batch)  # no logits_to_keep: every position's logits, the library's layer
    assert rows[-1] == batch["input_ids"].shape[1]

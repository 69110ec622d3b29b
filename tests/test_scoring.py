"""P(ACCEPT) from one left-padded forward pass equals the first-token softmax of a plain one (2 or 3 answers)."""
import copy

import numpy as np
import pytest
import torch
from PIL import Image

from maskgate.model import qwen as M
from maskgate.model.batching import IGNORE_INDEX, Example, prompt_text, training_batch
from maskgate.prompt import Prompt
from maskgate.model.scoring import answer_first_ids, score
from tests.conftest import project_params, settings


def spread(model, seed=1):
    """Larger random weights (std 0.3) on every matrix, drawn from `seed`."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for weight in model.parameters():
            if weight.ndim >= 2:
                weight.normal_(0, 0.3, generator=generator)
    return model


@pytest.fixture(scope="module")
def spread_tiny(tiny_qwen3vl_dir):
    """The tiny model with larger random weights, so attention and positions matter and scores spread.

    At the default init (std 0.02) every score is about 0.5 and attention is nearly uniform, so a
    padding or position bug would hardly move a score.
    """
    model, processor = M.load(tiny_qwen3vl_dir)
    return spread(model), processor


def noise_image(size, seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def direct_p_accept(model, processor, prompt, ex, n_answers=None):
    """One example, no padding, full logits: softmax over the first tokens of the first n answers (all by default)."""
    first_ids = [processor.tokenizer(a, add_special_tokens=False).input_ids[0] for a in prompt.answers[:n_answers]]
    enc = processor(text=[prompt_text(processor, prompt, ex.query)], images=[ex.image], return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits[0, -1]
    return torch.softmax(logits[first_ids], dim=-1)[0].item()


def test_batched_score_matches_direct_two_token_softmax(spread_tiny, verifier_prompt):
    model, processor = spread_tiny
    examples = [
        Example(noise_image(64, 0), "red car"),
        Example(noise_image(64, 1), "the two people on the far left holding umbrellas near the bus"),
        Example(noise_image(96, 2), "dog"),
        Example(noise_image(64, 3), "a small white cup"),
    ]
    batched = score(model, processor, verifier_prompt, examples, max_length=300, batch_size=3)
    direct = np.array([direct_p_accept(model, processor, verifier_prompt, ex) for ex in examples])
    alone = np.concatenate([score(model, processor, verifier_prompt, [ex], max_length=300) for ex in examples])
    assert batched.dtype == np.float64 and batched.shape == (4,)
    np.testing.assert_allclose(batched, direct, atol=1e-5)
    np.testing.assert_allclose(batched, alone, atol=1e-5)
    assert np.ptp(direct) > 0.1  # the scores differ, so agreement above is not trivial


def test_score_restores_training_mode(spread_tiny, verifier_prompt):
    model, processor = spread_tiny
    model.train()
    score(model, processor, verifier_prompt, [Example(noise_image(64, 0), "dog")], max_length=300)
    assert model.training
    model.eval()
    assert score(model, processor, verifier_prompt, [], max_length=300).shape == (0,)


def test_answers_sharing_a_first_token_are_refused(spread_tiny, verifier_prompt):
    _, processor = spread_tiny
    same_start = Prompt(verifier_prompt.system, verifier_prompt.user, ("ACCEPT", "ACCEPTED"))
    with pytest.raises(ValueError, match="same token"):
        score(spread_tiny[0], processor, same_start, [Example(noise_image(64, 0), "dog")], max_length=300)


@pytest.fixture(scope="module")
def three_answers(tmp_path_factory):
    """params.yaml with prompt.answers [ACCEPT, REJECT, BORDERLINE], nothing else changed; a tiny model of it."""
    params = copy.deepcopy(project_params())
    params["prompt"]["answers"] = ["ACCEPT", "REJECT", "BORDERLINE"]
    prompt = settings(params).prompt
    out = tmp_path_factory.mktemp("tiny_three_answers")
    M.build_tiny(out, prompt, seed=0)
    model, processor = M.load(out)
    return prompt, spread(model), processor


def test_a_third_answer_flows_through_without_code_changes(three_answers):
    prompt, model, processor = three_answers
    tok = processor.tokenizer
    assert prompt.user_text("dog").endswith("ACCEPT, REJECT or BORDERLINE.")
    # tiny tokenizer: each answer one token, three different first tokens
    assert [len(tok(a, add_special_tokens=False).input_ids) for a in prompt.answers] == [1, 1, 1]
    assert len(set(answer_first_ids(tok, prompt))) == 3

    # training batch: label 2 is supervised as BORDERLINE, and only the answer carries loss
    examples = [Example(noise_image(64, i), q, prompt.label_text(y), key=f"e{i}")
                for i, (q, y) in enumerate([("red car", 1), ("dog", 0), ("a half-hidden cup", 2)])]
    batch = training_batch(processor, prompt, examples, max_length=300)
    assert [tok.decode(row[row != IGNORE_INDEX]) for row in batch["labels"]] == ["ACCEPT", "REJECT", "BORDERLINE"]
    assert torch.isfinite(model(**batch).loss)

    # scoring: P(ACCEPT) is the softmax over all three first tokens, so BORDERLINE's mass counts against ACCEPT
    p = score(model, processor, prompt, examples, max_length=300, batch_size=2)
    three = np.array([direct_p_accept(model, processor, prompt, ex) for ex in examples])
    two = np.array([direct_p_accept(model, processor, prompt, ex, n_answers=2) for ex in examples])
    np.testing.assert_allclose(p, three, atol=1e-5)
    assert (two - three > 1e-3).all()  # not the two-answer score


def test_prefetched_batches_score_the_same_in_order(spread_tiny, verifier_prompt):
    """evaluate.prefetch prepares the next batch in a thread: same batches, same order, same scores."""
    from maskgate.model.scoring import batches

    model, processor = spread_tiny
    examples = [Example(noise_image(32, seed=i), f"thing {i}") for i in range(7)]
    plain = score(model, processor, verifier_prompt, examples, 10_000, batch_size=2)
    ahead = score(model, processor, verifier_prompt, examples, 10_000, batch_size=2, prefetch=True)
    assert (plain == ahead).all() and len(set(plain.tolist())) == 7
    sizes = [len(b["input_ids"]) for b in batches(processor, verifier_prompt, examples, 10_000, 3, prefetch=True)]
    assert sizes == [3, 3, 1]


def test_overlap_scores_the_same_and_makes_the_models_position_ids(spread_tiny, verifier_prompt):
    """evaluate.overlap: position ids made with the batch are the model's own; the scores are the same, in order."""
    from maskgate.model.scoring import Overlap, batches

    model, processor = spread_tiny
    examples = [Example(noise_image(32 + 32 * (i % 2), seed=i), "thing" + " big" * i) for i in range(7)]
    plain = score(model, processor, verifier_prompt, examples, 10_000, batch_size=3)
    for how in ({}, {"prefetch": True}, {"workers": 2}):
        over = score(model, processor, verifier_prompt, examples, 10_000, batch_size=3, overlap=True, **how)
        assert (over == plain).all(), how
    assert len(set(plain.tolist())) == 7
    # the ids the model would compute inside its forward, from a left-padded batch of two image sizes
    batch = next(batches(processor, verifier_prompt, examples, 10_000, 4, overlap=Overlap(model)))
    inner = model.model
    inner.rope_deltas = None
    own, _ = inner.get_rope_index(batch["input_ids"], mm_token_type_ids=batch["mm_token_type_ids"],
                                  image_grid_thw=batch["image_grid_thw"], attention_mask=batch["attention_mask"])
    assert torch.equal(batch["position_ids"], own) and (batch["attention_mask"] == 0).any()  # padding was there


def test_overlap_vision_tables_are_the_towers_own_and_are_used(spread_tiny, verifier_prompt):
    """The vision tables made ahead are what the tower would compute, and it takes them instead of its own."""
    from transformers import vision_utils as V

    from maskgate.model.scoring import Overlap, batches, launch

    model, processor = spread_tiny
    examples = [Example(noise_image(32 + 32 * (i % 2), seed=i), f"thing {i}") for i in range(4)]
    staging = Overlap(model)
    batch = next(batches(processor, verifier_prompt, examples, 10_000, 4, overlap=staging))
    grid, tower = batch["image_grid_thw"], model.model.visual
    assert torch.equal(batch["image_position_ids"], V.get_vision_position_ids(grid, tower.spatial_merge_size))
    assert torch.equal(batch["image_cu_seqlens"], V.get_vision_cu_seqlens(grid))
    indices, weights = V.get_vision_interpolation_indices_and_weights(
        grid, tower.num_grid_per_side, tower.interpolation_mode, tower.interpolation_align_corners,
        tower.config.spatial_merge_size)
    assert torch.equal(batch["image_interp_indices"], indices) and torch.equal(batch["image_interp_weights"], weights)
    assert staging.to_device(batch)["image_cu_seqlens"].device.type == "cpu"  # sdpa: the cuts are only counted
    model.eval()
    first = list(answer_first_ids(processor.tokenizer, verifier_prompt))
    same = launch(model, staging.to_device(batch), first).get()
    batch["image_interp_weights"] = batch["image_interp_weights"].flip(-1)  # other weights: the tower must see them
    moved = launch(model, staging.to_device(batch), first).get()
    assert np.abs(moved - same).max() > 1e-6


def test_last_layer_at_the_answer_position_scores_the_same(spread_tiny, verifier_prompt):
    """evaluate.last_layer_at_answer: the last decoder layer computes the last position only (its output is one
    position long), on left-padded batches of two image sizes; the scores equal the full layer's to fp32
    rounding, and training or a forward with a cache runs the library's layer."""
    from maskgate.model.last_layer import last_layer_at_answer
    from maskgate.model.speedups import decoder_layers

    model, processor = spread_tiny
    examples = [Example(noise_image(32 + 32 * (i % 2), seed=i), "thing" + " big" * (3 * i)) for i in range(5)]
    plain = score(model, processor, verifier_prompt, examples, 10_000, batch_size=5)
    fast = copy.deepcopy(model)
    assert last_layer_at_answer(fast, "test", print_fn=lambda *_: None)
    lengths = []
    hook = decoder_layers(fast)[-1].register_forward_hook(lambda m, a, out: lengths.append(out.shape[1]))
    trimmed = score(fast, processor, verifier_prompt, examples, 10_000, batch_size=5)
    np.testing.assert_allclose(trimmed, plain, atol=1e-5)
    assert lengths == [1] and len(set(plain.tolist())) == 5
    fast.train()  # training needs every position: the library's layer
    enc = training_batch(processor, verifier_prompt, [ex._replace(answer=a) for ex, a in zip(examples, verifier_prompt.answers)],
                         max_length=10_000)
    with torch.no_grad():
        fast(**enc)
    hook.remove()
    assert lengths[-1] == enc["input_ids"].shape[1]
    fast.eval()
    # a layer whose output would feed deepstack features is left alone
    shallow = copy.deepcopy(model)
    shallow.config.vision_config.deepstack_visual_indexes = [0] * len(decoder_layers(shallow))
    said = []
    assert not last_layer_at_answer(shallow, "test", print_fn=said.append) and "deepstack" in said[0]

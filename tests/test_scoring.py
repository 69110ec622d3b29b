"""P(ACCEPT) from one left-padded forward pass equals the two-token softmax of a plain forward pass."""
import numpy as np
import pytest
import torch
from PIL import Image

from maskgate import model as M
from maskgate.batching import Example, prompt_text
from maskgate.prompt import Prompt
from maskgate.scoring import answer_first_ids, score


@pytest.fixture(scope="module")
def spread_tiny(tiny_qwen3vl_dir):
    """The tiny model with larger random weights, so attention and positions matter and scores spread.

    At the default init (std 0.02) every score is about 0.5 and attention is nearly uniform, so a
    padding or position bug would hardly move a score.
    """
    model, processor = M.load(tiny_qwen3vl_dir)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for weight in model.parameters():
            if weight.ndim >= 2:
                weight.normal_(0, 0.3, generator=generator)
    return model, processor


def noise_image(size, seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def direct_p_accept(model, processor, prompt, ex):
    """One example, no padding, full logits: softmax over the two answers' first tokens."""
    accept, reject = answer_first_ids(processor.tokenizer, prompt)
    enc = processor(text=[prompt_text(processor, prompt, ex.query)], images=[ex.image], return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits[0, -1]
    return torch.softmax(logits[[accept, reject]], dim=-1)[0].item()


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

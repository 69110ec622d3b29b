"""The batched vision attention gives bitwise the library's per-image result, and steps aside when it cannot."""
import copy

import pytest
import torch

from maskgate.model import qwen as M
from maskgate.model import vision
from maskgate.model.batching import Example, scoring_batch
from maskgate.model.scoring import p_accept, answer_first_ids
from tests.conftest import project_params, settings
from tests.test_scoring import noise_image, spread


@pytest.fixture(scope="module")
def pair(tiny_qwen3vl_dir):
    """The tiny model with spread weights, and a deep copy of it with the batched path installed."""
    model, processor = M.load(tiny_qwen3vl_dir)
    model = spread(model).eval()
    fast = copy.deepcopy(model)
    assert vision.batch_vision_attention(fast, "test", print_fn=lambda *_: None)
    return model, fast, processor


def tower(model):
    return next(m for m in model.modules() if type(m).__name__ == vision.VISION_MODEL)


def calls(model):
    """Counts the attention calls of the vision tower: (batched, per-image) forwards of its layers."""
    counts = {"batched": 0, "per_image": 0}
    for m in tower(model).modules():
        if type(m).__name__ == vision.VISION_ATTENTION:
            original = m._maskgate_per_image

            def per_image(*a, _original=original, **k):
                counts["per_image"] += 1
                return _original(*a, **k)

            m._maskgate_per_image = per_image
    return counts


def encode(processor, sizes):
    prompt = settings(project_params()).prompt
    examples = [Example(noise_image(s, seed=i), f"object {i}") for i, s in enumerate(sizes)]
    return scoring_batch(processor, prompt, examples, max_length=10_000), prompt


@torch.inference_mode()
def test_one_grid_is_batched_and_bitwise_equal(pair):
    model, fast, processor = pair
    batch, _ = encode(processor, [64, 64, 64])
    plain = tower(model)(batch["pixel_values"], grid_thw=batch["image_grid_thw"])
    counts = calls(fast)
    out = tower(fast)(batch["pixel_values"], grid_thw=batch["image_grid_thw"])
    assert counts["per_image"] == 0  # every layer took the batched path
    assert torch.equal(out.last_hidden_state, plain.last_hidden_state)
    assert torch.equal(out.pooler_output, plain.pooler_output)
    assert all(torch.equal(a, b) for a, b in zip(out.deepstack_features, plain.deepstack_features, strict=True))
    per_image = plain.last_hidden_state.shape[0] // 3
    assert not torch.equal(plain.last_hidden_state[:per_image], plain.last_hidden_state[-per_image:])  # images differ


@torch.inference_mode()
def test_whole_model_scores_are_bitwise_equal(pair):
    model, fast, processor = pair
    batch, prompt = encode(processor, [64, 64, 64, 64])
    ids = list(answer_first_ids(processor.tokenizer, prompt))
    assert (p_accept(fast, batch, ids) == p_accept(model, batch, ids)).all()


@torch.inference_mode()
def test_images_of_several_grids_take_the_library_path(pair):
    model, fast, processor = pair
    batch, _ = encode(processor, [64, 96])
    counts = calls(fast)
    out = tower(fast)(batch["pixel_values"], grid_thw=batch["image_grid_thw"])
    plain = tower(model)(batch["pixel_values"], grid_thw=batch["image_grid_thw"])
    assert counts["per_image"] == len(tower(fast).blocks)
    assert torch.equal(out.pooler_output, plain.pooler_output)


def test_needs_sdpa(tiny_qwen3vl_dir):
    model, _ = M.load(tiny_qwen3vl_dir)
    tower(model).config._attn_implementation = "eager"
    said = []
    assert not vision.batch_vision_attention(model, "test", print_fn=said.append)
    assert "needs the vision tower's attention to be sdpa" in said[0]


def test_no_vision_tower_is_an_error():
    with pytest.raises(ValueError, match="found no Qwen3VLVisionModel"):
        vision.batch_vision_attention(torch.nn.Linear(2, 2), "test")


def test_patch_embedding_as_one_matrix_product(tiny_qwen3vl_dir):
    """evaluate.patch_matmul: the Conv3d patch embedding as a matrix product gives the same embeddings (fp32
    rounding) and the same scores, and the matrix product is what runs."""
    model, processor = M.load(tiny_qwen3vl_dir)
    model = spread(model).eval()
    fast = copy.deepcopy(model)
    assert vision.patch_embed_as_matmul(fast, "test", print_fn=lambda *_: None) == 1
    assert vision.patch_embed_as_matmul(fast, "test", print_fn=lambda *_: None) == 0  # once only
    batch, prompt = encode(processor, [32, 64, 32])
    embed, embed_fast = (next(m for m in x.modules() if type(m).__name__ == vision.PATCH_EMBED) for x in (model, fast))
    with torch.no_grad():
        a, b = embed(batch["pixel_values"]), embed_fast(batch["pixel_values"])
    assert a.shape == b.shape and (a - b).abs().max() <= 1e-5 * a.abs().max()  # fp32: the order of additions
    first = list(answer_first_ids(processor.tokenizer, prompt))
    p, q = p_accept(model, batch, first), p_accept(fast, batch, first)
    assert torch.allclose(torch.as_tensor(p), torch.as_tensor(q), atol=1e-5)
    with torch.no_grad():
        embed_fast.proj.weight.mul_(1.5)  # the product reads the conv's own weight: a change must show
    assert not torch.allclose(embed_fast(batch["pixel_values"]), a, atol=1e-3)

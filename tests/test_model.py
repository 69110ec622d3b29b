"""The tiny Qwen3-VL: offline, reproducible, wired like the real one; presets; image token counts."""
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import trl
from PIL import Image

from maskgate.model import qwen as M
def file_hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_build_is_byte_identical_for_same_seed(tmp_path, verifier_prompt, tiny_qwen3vl_dir):
    M.build_tiny(tmp_path / "again", verifier_prompt, seed=0)
    M.build_tiny(tmp_path / "other", verifier_prompt, seed=1)
    same, other = file_hashes(tiny_qwen3vl_dir), file_hashes(tmp_path / "again")
    assert same == other
    assert "model.safetensors" in same and "tokenizer.json" in same
    changed = {k for k, v in file_hashes(tmp_path / "other").items() if same[k] != v}
    assert changed == {"model.safetensors", "tiny_size.json"}  # the seed changes weights, not the tokenizer


def test_tiny_model_is_wired_like_qwen3_vl(tiny_qwen3vl_dir, verifier_prompt):
    model, processor = M.load(tiny_qwen3vl_dir)
    cfg, tok = model.config, processor.tokenizer
    assert type(model).__name__ == "Qwen3VLForConditionalGeneration"
    assert (type(processor.image_processor).__name__, type(tok).__name__, type(processor.video_processor).__name__) == (
        "Qwen2VLImageProcessor",
        "Qwen2Tokenizer",  # transformers 5 spells Qwen2TokenizerFast this way
        "Qwen3VLVideoProcessor",
    )
    assert cfg.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert cfg.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>")
    assert cfg.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    assert cfg.vision_end_token_id == tok.convert_tokens_to_ids("<|vision_end|>")
    assert cfg.text_config.vocab_size == len(tok)
    assert cfg.vision_config.out_hidden_size == cfg.text_config.hidden_size
    assert sum(cfg.text_config.rope_parameters["mrope_section"]) == cfg.text_config.head_dim // 2
    assert max(cfg.vision_config.deepstack_visual_indexes) < cfg.vision_config.depth
    for special in M.SPECIAL_TOKENS:
        assert tok.tokenize(special) == [special]
    accept, reject = (tok(a, add_special_tokens=False).input_ids for a in verifier_prompt.answers[:2])
    assert len(accept) == len(reject) == 1 and accept != reject
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    assert not model.training


def test_tokenizer_splits_queries_into_words(tiny_qwen3vl_dir):
    _, processor = M.load(tiny_qwen3vl_dir)
    assert processor.tokenizer.tokenize("the two people on the left holding a red umbrella") == [
        "the", "Ġtwo", "Ġpeople", "Ġon", "Ġthe", "Ġleft", "Ġholding", "Ġa", "Ġred", "Ġumbrella"
    ]


def test_chat_template_is_trls_qwen3_vl_template():
    trl_copy = Path(trl.__file__).parent / "chat_templates" / "qwen3_vl.jinja"
    assert M.chat_template() == trl_copy.read_text(encoding="utf-8")


@pytest.mark.parametrize("size", [64, 96])
def test_square_image_keeps_its_size_and_token_count(tiny_qwen3vl_dir, size):
    _, processor = M.load(tiny_qwen3vl_dir)
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    out = processor.image_processor(images=[Image.fromarray(pixels)], return_tensors="pt")
    assert out["image_grid_thw"].tolist() == [[1, size // 16, size // 16]]
    assert out["pixel_values"].shape[0] // 4 == M.image_token_count(size)
    # patch (0, 0) holds the image's top-left 16x16 pixels unchanged (scaled to [-1, 1]): no resampling
    first = out["pixel_values"][0].reshape(3, 2, 16, 16)[:, 0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(first, pixels[:16, :16] / 255 * 2 - 1, atol=1e-5)


def test_load_widens_hub_image_bounds(tmp_path, verifier_prompt):
    """The hub processor's minimum (256x256) would upscale a 64 px image to 64 tokens; load keeps 4."""
    M.build_tiny(tmp_path, verifier_prompt, seed=0)
    config_file = tmp_path / "processor_config.json"
    config = json.loads(config_file.read_text())
    config["image_processor"]["size"] = {"shortest_edge": 65536, "longest_edge": 16777216}
    config_file.write_text(json.dumps(config))
    _, processor = M.load(tmp_path)
    out = processor.image_processor(images=[Image.new("RGB", (64, 64))], return_tensors="pt")
    assert out["image_grid_thw"].tolist() == [[1, 4, 4]]


def test_image_token_count():
    assert M.image_token_count(672) == 441
    assert M.image_token_count(896) == 784
    assert M.image_token_count(224) == 49
    for bad in (100, 0, 8192):
        with pytest.raises(ValueError):
            M.image_token_count(bad)


def test_presets_map_to_hub_ids(tmp_path):
    assert M.source("qwen3-vl-8b") == "Qwen/Qwen3-VL-8B-Instruct"
    assert M.source("qwen3-vl-8b", backend="unsloth") == "Qwen/Qwen3-VL-8B-Instruct"  # 16-bit: the exact repo
    assert M.source("qwen3-vl-8b", "unsloth", load_in_4bit=True) == "unsloth/Qwen3-VL-8B-Instruct-unsloth-bnb-4bit"
    assert M.source(tmp_path) == str(tmp_path)
    assert M.source("Qwen/Qwen3-VL-8B-Instruct") == "Qwen/Qwen3-VL-8B-Instruct"  # what verifier.json names
    with pytest.raises(ValueError, match="build_tiny"):
        M.source("tiny")
    with pytest.raises(ValueError, match="neither a folder, a hub id"):
        M.source("qwen9-huge")
    with pytest.raises(ValueError, match="neither a folder, a hub id"):
        M.source("../up/../there")


def test_the_8b_shape_is_refused_without_a_gpu(tmp_path, verifier_prompt):
    from maskgate.model.qwen import QWEN3_VL_8B_SIZE, TinySize, tiny_config, tiny_processor

    config = tiny_config(TinySize(**QWEN3_VL_8B_SIZE), tiny_processor(verifier_prompt, 2048).tokenizer)
    config.save_pretrained(tmp_path)
    assert 8e9 < M.parameter_count(str(tmp_path)) < 9.5e9
    with pytest.raises(ValueError, match=r"has 8\.\dB parameters and no CUDA GPU"):
        M.check_device(str(tmp_path), None, cuda=False)
    M.check_device(str(tmp_path), None, cuda=True)


@pytest.mark.parametrize(
    "bad",
    [
        {"vision_depth": 2, "deepstack_visual_indexes": (2,)},
        {"head_dim": 7},
        {"num_position_embeddings": 200},
        {"vision_hidden_size": 36, "vision_num_heads": 2},  # vision head dim 18: not a multiple of 4
        {"num_hidden_layers": 1, "vision_depth": 3, "deepstack_visual_indexes": (0, 1)},
    ],
)
def test_tiny_size_rejects_inconsistent_shapes(bad):
    with pytest.raises(ValueError):
        M.TinySize(**bad)


def test_mrope_section_sums_to_half_head_dim():
    for head_dim in (16, 32, 64, 128):
        section = M.mrope_section(head_dim)
        assert sum(section) == head_dim // 2
    assert M.mrope_section(128) == [24, 20, 20]  # Qwen3-VL's own split


def test_random_8b_preset_has_qwen3_vl_8b_shape(verifier_prompt):
    """The random-8b preset's config gives Qwen3-VL-8B's parameter count (built on the meta device)."""
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    from maskgate.model.qwen import TinySize, preset_size, tiny_config, tiny_processor

    size = TinySize(**preset_size("random-8b"))
    config = tiny_config(size, tiny_processor(verifier_prompt, size.vocab_size).tokenizer)
    with torch.device("meta"):
        model = Qwen3VLForConditionalGeneration(config)
    n = sum(p.numel() for p in model.parameters())
    assert 8.6e9 < n < 8.9e9, n  # Qwen3-VL-8B-Instruct: 8.77e9 parameters
    assert model.config.text_config.vocab_size == 151936

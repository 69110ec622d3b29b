"""Issue 7's speed work on CPU: FLOPs count, the FP8 layer, the scoring speed settings, the bench end to end."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from maskgate.model import flops
from maskgate.model import fp8
from maskgate.model import speedups
ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------- FLOPs


def small_shape():
    return flops.Shape(hidden=8, intermediate=16, layers=2, heads=2, kv_heads=1, head_dim=4, vocab=10,
                       vision_hidden=4, vision_intermediate=8, vision_layers=1, vision_out=8, patch_size=2,
                       temporal_patch_size=2, in_channels=3, merge_size=2, deepstack=1)


def test_flops_match_a_hand_count():
    s = small_shape()
    # language layer: q 8x8, k 8x4, v 8x4, o 8x8, gate/up 8x16 each, down 16x8 = 64+32+32+64+128+128+128 = 576
    assert flops.language_params(s) == 2 * 576
    # vision block: qkv 4x12 + proj 4x4 + fc1 4x8 + fc2 8x4 = 48+16+32+32 = 128; patch embed 3*2*2*2*4 = 96
    assert flops.vision_params(s) == 128 + 96
    # mergers (1 + 1 deepstack): fc1 16x16 + fc2 16x8 = 384 each
    assert flops.merger_params(s) == 2 * 384
    # LoRA r=2 on q and down: (8+8)*2 + (16+8)*2 = 80 per layer
    assert flops.lora_params(s, 2, ["q_proj", "down_proj"]) == 160
    t, i = 10, 2  # 10 tokens, 2 image tokens = 8 patches
    p = flops.parts(s, t, i, 2, ["q_proj", "down_proj"], logit_positions=1)
    assert p["vision"] == 2 * 224 * 8 + 4 * 1 * 8**2 * 4 + 2 * 768 * 2
    assert p["language_matmul"] == 2 * 1152 * 10
    assert p["language_attention"] == 4 * 2 * 10**2 * 2 * 4
    assert p["lora"] == 2 * 160 * 10 and p["lm_head"] == 2 * 8 * 10
    assert flops.scoring_flops(s, t, i) == p["vision"] + p["language_matmul"] + p["language_attention"] + p["lm_head"]
    train = flops.training_flops(s, t, i, 2, ["q_proj", "down_proj"], 1)
    assert train == p["vision"] + 2 * p["language_matmul"] + 3 * p["language_attention"] + 3 * p["lora"] + 2 * p["lm_head"]
    recompute = p["language_matmul"] + p["language_attention"] + p["lora"]
    assert flops.hardware_flops(s, t, i, 2, ["q_proj", "down_proj"], 1, checkpointing=True) == train + recompute
    assert flops.hardware_flops(s, t, i, 2, ["q_proj", "down_proj"], 1, checkpointing=False) == train


def test_flops_weights_match_the_real_modules(tiny_qwen3vl_dir):
    """The shape's weight counts equal the weights of the model's own linear layers."""
    from maskgate.model import qwen as M
    model, _ = M.load(tiny_qwen3vl_dir)
    s = flops.Shape.from_config(model.config)
    named = dict(model.named_modules())

    def weights(pred):
        return sum(m.weight.numel() for n, m in named.items() if isinstance(m, (nn.Linear, nn.Conv3d)) and pred(n))

    assert flops.language_params(s) == weights(lambda n: "language_model.layers." in n)
    assert flops.vision_params(s) == weights(lambda n: "visual.blocks." in n or n.endswith("visual.patch_embed.proj"))
    assert flops.merger_params(s) == weights(lambda n: "merger" in n)
    assert s.vocab == named["lm_head"].weight.shape[0]


def test_flops_of_the_8b_shape_give_the_facts_floor():
    """FACTS.md: about 73 examples/s for scoring at 617 tokens and 790 TFLOP/s."""
    s = flops.Shape(hidden=4096, intermediate=12288, layers=36, heads=32, kv_heads=8, head_dim=128, vocab=151936,
                    vision_hidden=1152, vision_intermediate=4304, vision_layers=27, vision_out=4096, patch_size=16,
                    temporal_patch_size=2, in_channels=3, merge_size=2, deepstack=3)
    assert 72 < 790e12 / flops.scoring_flops(s, 616, 441) < 75


# ---------------------------------------------------------------------------------------------- FP8


def test_fp8_layer_matches_the_linear_within_fp8_rounding():
    torch.manual_seed(0)
    linear = nn.Linear(64, 96).requires_grad_(False)
    layer = fp8.FrozenFp8Linear.from_linear(linear)
    x = torch.randn(3, 5, 64, requires_grad=True)
    y, y0 = layer(x), linear(x)
    assert y.shape == y0.shape
    assert (y - y0).abs().max() < 0.05 * y0.abs().max()  # e4m3: 3 mantissa bits
    assert (y - y0).abs().max() > 0  # it really ran in FP8
    g = torch.randn_like(y)
    (gx,), (gx0,) = torch.autograd.grad(y, x, g), torch.autograd.grad(y0, x, g)
    assert (gx - gx0).abs().max() < 0.05 * gx0.abs().max()
    assert not any(p.requires_grad for p in layer.parameters())


def test_fp8_refuses_trained_or_odd_layers():
    with pytest.raises(ValueError, match="frozen"):
        fp8.FrozenFp8Linear.from_linear(nn.Linear(32, 32))
    with pytest.raises(ValueError, match="divisible by 16"):
        fp8.FrozenFp8Linear.from_linear(nn.Linear(24, 32).requires_grad_(False))


def test_fp8_converts_only_the_frozen_decoder_linears(tiny_qwen3vl_dir, params):
    from peft import get_peft_model

    from maskgate.model import qwen as M
    from maskgate.model.train import lora_config, train_settings

    model, _ = M.load(tiny_qwen3vl_dir)
    model = get_peft_model(model, lora_config(train_settings(params)["lora"]))
    n = fp8.convert(model)
    assert n == 7 * model.config.text_config.num_hidden_layers  # the base_layer of every LoRA layer
    for name, m in model.named_modules():
        if isinstance(m, fp8.FrozenFp8Linear):
            assert name.endswith(".base_layer") and "language_model.layers." in name
    assert type(model.get_output_embeddings()) is nn.Linear
    assert all(type(m) is nn.Linear for n_, m in model.named_modules() if "visual" in n_ and isinstance(m, nn.Linear))


def test_fp8_and_compile_are_noops_that_say_why_off_cuda(tiny_qwen3vl_dir):
    from maskgate.model import qwen as M
    said = []
    model, _ = M.load(tiny_qwen3vl_dir)
    out = speedups.for_scoring(model, {"merge_adapter": False, "fp8": True, "compile": True, "workers": 0}, "test",
                               print_fn=said.append)
    assert out is model and not any(isinstance(m, fp8.FrozenFp8Linear) for m in model.modules())
    assert any("fp8 requested but device cpu is not a CUDA GPU" in s for s in said)
    assert any("compile requested but device cpu is not a CUDA GPU" in s for s in said)
    with pytest.raises(ValueError, match="evaluate.workers"):
        speedups.speed_settings({"merge_adapter": False, "fp8": False, "compile": False, "workers": -1})
    with pytest.raises(ValueError, match=r"lack \['fp8', 'compile'\]"):  # no defaults in code: params.yaml's
        speedups.speed_settings({"merge_adapter": False, "workers": 0})


def test_train_fp8_is_checked(params):
    from maskgate.model.train import ParamsError, train_settings

    params["train"]["fp8"] = "yes"
    with pytest.raises(ParamsError, match="train.fp8"):
        train_settings(params)


# ---------------------------------------------------------------------------------------------- scoring


def test_merged_adapter_and_workers_keep_p_accept(tiny_qwen3vl_dir, verifier_prompt):
    from peft import LoraConfig, get_peft_model
    from PIL import Image

    from maskgate.model import qwen as M
    from maskgate.model.batching import Example
    from maskgate.model.scoring import score

    model, processor = M.load(tiny_qwen3vl_dir)
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "down_proj"], init_lora_weights=False))
    rng = np.random.default_rng(0)
    examples = [Example(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)), f"the {c} shape")
                for c in ("red", "blue", "green", "white", "red")]
    p0 = score(model, processor, verifier_prompt, examples, 256, batch_size=2)
    p1 = score(model, processor, verifier_prompt, examples, 256, batch_size=2, workers=2)
    np.testing.assert_array_equal(p0, p1)
    merged = speedups.for_scoring(model, {"merge_adapter": True, "fp8": False, "compile": False, "workers": 0}, "test",
                                  print_fn=lambda s: None)
    assert not hasattr(merged, "peft_config")
    np.testing.assert_allclose(score(merged, processor, verifier_prompt, examples, 256, batch_size=2), p0, atol=1e-5)


# ---------------------------------------------------------------------------------------------- bench


@pytest.mark.slow
def test_throughput_bench_smoke(tmp_path):
    """The bench end to end on CPU: data, matmul rate, base build, a training and a scoring config, JSON out."""
    out = tmp_path / "out"
    cmd = [sys.executable, "bench/throughput.py", "--smoke", "--out", str(out), "--work", str(tmp_path / "work"),
           "--configs", "ref-hf-gc-b16,ref-unsloth4-b32,ref-score-b32,score-w4-merge-fp8-b32"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    train = json.loads((out / "ref-hf-gc-b16.json").read_text())
    assert train["status"] == "ok" and train["examples"] == 2 * 2 and train["examples_per_s"] > 0
    assert len(train["loss_steps"]) == 3 and all(np.isfinite(x["loss"]) for x in train["loss_steps"])
    assert train["mfu"] > 0 and train["hfu"] > train["mfu"]  # checkpointing recomputes
    ref, fast = (json.loads((out / f"{n}.json").read_text()) for n in ("ref-score-b32", "score-w4-merge-fp8-b32"))
    assert len(ref["p_accept"]) == 4 and fast["max_dp_vs_ref"] < 1e-4  # CPU: fp8 is off, merge is exact to fp32
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert {x["name"]: x["status"] for x in lines}["ref-unsloth4-b32"].startswith("skipped")
    assert "ref-hf-gc-b16" in p.stdout and "MFU" in p.stdout

"""Issue 7's speed work on CPU: FLOPs count, the scoring speed settings, the bench end to end."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from maskgate.model import flops
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


# ---------------------------------------------------------------------------------------------- speed settings


def test_compile_is_a_noop_that_says_why_off_cuda(tiny_qwen3vl_dir):
    from maskgate.model import qwen as M
    said = []
    model, _ = M.load(tiny_qwen3vl_dir)
    scoring = speedups.Scoring(batch_size=2, workers=0, prefetch=False, merge_adapter=False, compile=True, batched_vision=False, compile_vision=False)
    out = speedups.for_scoring(model, scoring, "test", print_fn=said.append)
    assert out is model and not out.training
    assert any("compiling the decoder layers requested but device cpu is not a CUDA GPU" in s for s in said)


def test_scoring_settings_are_the_evaluate_section(params):
    from maskgate import config

    params["evaluate"].update(batch_size=4, workers=2, prefetch=False, merge_adapter=False, compile=True,
                              batched_vision=True, compile_vision=False, overlap=True, patch_matmul=True,
                              last_layer_at_answer=False)
    scoring = speedups.Scoring.of(config.from_dict(params).evaluate)
    assert scoring == speedups.Scoring(batch_size=4, workers=2, prefetch=False, merge_adapter=False, compile=True,
                                       batched_vision=True, compile_vision=False, overlap=True, patch_matmul=True,
                                       last_layer_at_answer=False)
    params["evaluate"]["workers"] = -1
    with pytest.raises(config.ParamsError, match="evaluate.workers"):
        config.from_dict(params)
    with pytest.raises(ValueError, match="recorded scoring settings"):  # no defaults in code: all seven keys
        speedups.Scoring.from_dict({"batch_size": 4, "workers": 0}, "test")


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
    merged = speedups.for_scoring(model, speedups.Scoring(batch_size=2, workers=0, prefetch=False, merge_adapter=True, compile=False, batched_vision=False, compile_vision=False),
                                  "test", print_fn=lambda s: None)
    assert not hasattr(merged, "peft_config")
    np.testing.assert_allclose(score(merged, processor, verifier_prompt, examples, 256, batch_size=2), p0, atol=1e-5)


# ---------------------------------------------------------------------------------------------- bench


@pytest.mark.slow
def test_throughput_bench_smoke(tmp_path):
    """The bench end to end on CPU: data, matmul rate, base build, a training and a scoring config, JSON out."""
    out = tmp_path / "out"
    cmd = [sys.executable, "bench/throughput.py", "--smoke", "--out", str(out), "--work", str(tmp_path / "work"),
           "--configs", "ref-hf-gc-b16,hf-gc-b16,ref-unsloth4-b32,ref-score-b32,score-w4-merge-b32"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    train = json.loads((out / "ref-hf-gc-b16.json").read_text())
    assert train["status"] == "ok" and train["examples"] == 2 * 2 and train["examples_per_s"] > 0
    assert len(train["loss_steps"]) == 3 and all(np.isfinite(x["loss"]) for x in train["loss_steps"])
    assert train["mfu"] > 0 and train["hfu"] > train["mfu"]  # checkpointing recomputes
    # the same steps with the loss from the answer positions' logits only (answer_loss): the same losses
    answer = json.loads((out / "hf-gc-b16.json").read_text())
    assert answer["status"] == "ok" and len(answer["loss_steps"]) == 3
    np.testing.assert_allclose([x["loss"] for x in answer["loss_steps"]], [x["loss"] for x in train["loss_steps"]],
                               rtol=1e-5)
    ref, fast = (json.loads((out / f"{n}.json").read_text()) for n in ("ref-score-b32", "score-w4-merge-b32"))
    # the same adapter (B drawn non-zero) merged, batches from 2 worker processes: P(ACCEPT) equal to fp32 rounding
    assert fast["status"] == "ok" and fast["settings"] == {"workers": 2, "prefetch": False, "merge_adapter": True, "compile": False,
                                                    "batched_vision": False, "compile_vision": False, "overlap": False,
                                                    "patch_matmul": False, "last_layer_at_answer": False}
    assert len(ref["p_accept"]) == len(fast["p_accept"]) == 4 and fast["max_dp_vs_ref"] < 1e-4
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert {x["name"]: x["status"] for x in lines}["ref-unsloth4-b32"].startswith("skipped")
    assert "ref-hf-gc-b16" in p.stdout and "MFU" in p.stdout


def bench_module():
    """bench/throughput.py as a module (it is a script, not part of the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("throughput", ROOT / "bench" / "throughput.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_the_tables_default_rows_are_params_yaml():
    """bench/throughput.py's `table` rows named as the defaults carry params.yaml's own speed settings."""
    import yaml

    from tests.project import committed_params

    bench = bench_module()

    params = yaml.safe_load(committed_params())  # what a clone runs (scripts/demo.sh changes the working copy's)
    score = bench.CONFIGS[bench.DEFAULT_SCORE]
    assert {k: params["evaluate"][k] for k in score["evaluate"]} == score["evaluate"]
    assert score["batch_size"] == 64 and params["evaluate"]["batch_size"] == "auto"  # auto searches up to 64
    train = bench.CONFIGS[bench.DEFAULT_TRAIN]
    assert {k: params["train"][k] for k in train["train"]} == {**train["train"], "backend": params["train"]["backend"]}
    assert train["backend"] == "unsloth" and params["train"]["backend"] == "auto"  # auto picks unsloth on a GPU
    assert train["micro_batch_size"] == params["train"]["micro_batch_size"] == "auto"  # the card's own
    assert train["lora"] == {} and train["ahead"] and train["head"] == "answer" and train["env"] == {}
    assert {bench.DEFAULT_TRAIN, bench.DEFAULT_SCORE, "ref-unsloth4-b32", "ref-score-b32"} <= set(bench.TABLE)


def test_the_profiles_idle_holes_name_what_the_cpu_did_in_them():
    """The GPU's holes between kernels (microseconds), and the CPU ops that overlap each, by overlap."""
    bench = bench_module()
    gaps = [(100.0, 150.0), (1000.0, 1400.0), (3000.0, 5000.0)]  # (start, end): 50, 400 and 2000 us
    cpu = [(0.0, 6000.0, "ProfilerStep"),          # around everything: in every hole
           (900.0, 1200.0, "aten::item"),           # 200 of the 400 us hole
           (2500.0, 4000.0, "DataLoader.__next__"),  # 1000 of the 2000 us hole
           (3900.0, 4100.0, "aten::copy_"),         # inside the same hole, nested in the one above
           (1500.0, 2900.0, "aten::mm")]            # between holes: in none
    idle = bench.idle_gaps(gaps, cpu, t0=0.0, min_us=100.0)
    assert idle["holes_s"] == pytest.approx(0.00245, abs=1e-4) and idle["holes"] == 3 and idle["holes_over_100us"] == 2
    assert idle["holes_over_100us_s"] == pytest.approx(0.0024, abs=1e-4)
    assert [h["ms"] for h in idle["largest"]] == [2.0, 0.4] and [h["at_ms"] for h in idle["largest"]] == [3.0, 1.0]
    assert idle["largest"][0]["cpu"] == ["ProfilerStep 2.00", "DataLoader.__next__ 1.00", "aten::copy_ 0.20"]
    assert idle["largest"][1]["cpu"] == ["ProfilerStep 0.40", "aten::item 0.20"]
    assert idle["cpu_ms_in_holes"] == {"ProfilerStep": 2.4, "DataLoader.__next__": 1.0, "aten::item": 0.2,
                                       "aten::copy_": 0.2}


def test_kernels_are_sorted_by_what_they_do():
    """The profile's kinds, from real kernel names: inductor's casts are not convolutions."""
    kind = bench_module().kernel_kind
    assert kind("triton_poi_fused_convert_element_type_mul_3") == "triton"
    assert kind("void implicit_convolveNd_sgemm<__nv_bfloat16, 3, 128, 6, 7, 3, 3, 5, 1, false, false, true") == "conv"
    assert kind("nvjet_sm90_tst_256x152_64x4_2x1_v_bz_coopA_NNT") == "gemm"
    assert kind("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x128_4x1x1_cga1x1") == "attention"
    assert kind("Memcpy DtoD (Device -> Device)") == "copy"
    assert kind("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>") == "other"

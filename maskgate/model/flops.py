"""Model FLOPs of one verifier example, from the model's shape: the numerator of MFU.

Counts matrix multiplies only (2 FLOPs per multiply-add); norms, activations, rotary embeddings and
the softmax are left out, as is usual for MFU. Per example, with T tokens of which I are image
tokens (each made of 4 patches, so P = 4 I patches), for a Qwen3-VL config:

  vision    V = 2 Pv P + 4 Lv P^2 dv + 2 Pm I
              Pv: matmul weights of the vision blocks (qkv, proj, fc1, fc2 of each of Lv blocks) plus the
              patch embedding; the attention term counts QK^T and AV over all P patches (bidirectional);
              Pm: the patch merger and the deepstack mergers, applied to the I merged tokens.
  language  L = 2 Pl T + 4 Ll T^2 h dh
              Pl: q, k, v, o, gate, up, down of each of Ll layers; attention counted in full (T^2, as
              a dense attention kernel does; a causal one does about half of it).
  LoRA      R = 2 Pr T, Pr = sum over targeted layers of r (in + out).
  LM head   H = 2 d V K at K positions: K = 1 for scoring, the supervised answer tokens for training.

  scoring   V + L + H(K=1)                       (a merged adapter costs nothing extra)
  training  V + 2 Pl T x 2 + 3 x attention + 3 R + 2 H(K=answer tokens)
              the base is frozen: its backward only propagates to the input (one product per forward
              product, no weight gradient); attention backward is two products per forward one; LoRA's
              backward needs both gradients (2 x its forward); the vision tower gets no backward at all
              (no trainable weight there and pixels need no gradient).

These are *model* FLOPs: the same for every way of running the same example, so MFU ratios between
configurations are throughput ratios. Work that a configuration adds on top (recomputing the decoder
forward under gradient checkpointing, logits at every position, an unmerged adapter while scoring)
is *hardware* FLOPs: `hardware_flops` adds the recompute, reported as HFU beside MFU.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Shape:
    """What the count needs from a Qwen3-VL config (see `from_config`)."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int  # rows of lm_head
    vision_hidden: int
    vision_intermediate: int
    vision_layers: int
    vision_out: int  # = hidden
    patch_size: int
    temporal_patch_size: int
    in_channels: int
    merge_size: int
    deepstack: int  # number of deepstack mergers

    @classmethod
    def from_config(cls, config) -> "Shape":
        t, v = config.text_config, config.vision_config
        return cls(
            hidden=t.hidden_size, intermediate=t.intermediate_size, layers=t.num_hidden_layers,
            heads=t.num_attention_heads, kv_heads=t.num_key_value_heads,
            head_dim=getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads, vocab=t.vocab_size,
            vision_hidden=v.hidden_size, vision_intermediate=v.intermediate_size, vision_layers=v.depth,
            vision_out=v.out_hidden_size, patch_size=v.patch_size, temporal_patch_size=v.temporal_patch_size,
            in_channels=v.in_channels, merge_size=v.spatial_merge_size, deepstack=len(v.deepstack_visual_indexes),
        )


def layer_linears(s: Shape) -> dict[str, tuple[int, int]]:
    """(in, out) of each decoder-layer linear of the language model, by name."""
    q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
    return {"q_proj": (s.hidden, q), "k_proj": (s.hidden, kv), "v_proj": (s.hidden, kv), "o_proj": (q, s.hidden),
            "gate_proj": (s.hidden, s.intermediate), "up_proj": (s.hidden, s.intermediate),
            "down_proj": (s.intermediate, s.hidden)}


def language_params(s: Shape) -> int:
    """Pl: matmul weights of the language model's decoder layers (embedding and lm_head excluded)."""
    return s.layers * sum(i * o for i, o in layer_linears(s).values())


def vision_params(s: Shape) -> int:
    """Pv: matmul weights of the vision blocks plus the patch embedding (per patch)."""
    d, f = s.vision_hidden, s.vision_intermediate
    block = d * 3 * d + d * d + d * f + f * d
    patch_embed = s.in_channels * s.temporal_patch_size * s.patch_size**2 * d
    return s.vision_layers * block + patch_embed


def merger_params(s: Shape) -> int:
    """Pm: the patch merger and each deepstack merger (fc1 merged -> merged, fc2 merged -> out), per merged token."""
    merged = s.vision_hidden * s.merge_size**2
    return (1 + s.deepstack) * (merged * merged + merged * s.vision_out)


def lora_params(s: Shape, r: int, targets: list[str]) -> int:
    """Pr: LoRA weights on the named decoder linears (peft's suffix match on the standard names)."""
    return s.layers * sum(r * (i + o) for name, (i, o) in layer_linears(s).items() if name in targets)


def parts(s: Shape, tokens: int, image_tokens: int, lora_r: int = 0, lora_targets: list[str] = (),
          logit_positions: int = 1) -> dict:
    """Forward FLOPs of one example, by part (see the module docstring)."""
    patches = image_tokens * s.merge_size**2
    return {
        "vision": 2 * vision_params(s) * patches + 4 * s.vision_layers * patches**2 * s.vision_hidden
        + 2 * merger_params(s) * image_tokens,
        "language_matmul": 2 * language_params(s) * tokens,
        "language_attention": 4 * s.layers * tokens**2 * s.heads * s.head_dim,
        "lora": 2 * lora_params(s, lora_r, list(lora_targets)) * tokens,
        "lm_head": 2 * s.hidden * s.vocab * logit_positions,
    }


def scoring_flops(s: Shape, tokens: int, image_tokens: int) -> int:
    """Model FLOPs to score one example (one forward, one logit position, adapter merged)."""
    p = parts(s, tokens, image_tokens)
    return p["vision"] + p["language_matmul"] + p["language_attention"] + p["lm_head"]


def training_flops(s: Shape, tokens: int, image_tokens: int, lora_r: int, lora_targets: list[str],
                   answer_tokens: int = 1) -> int:
    """Model FLOPs to train on one example: LoRA on a frozen base (see the module docstring)."""
    p = parts(s, tokens, image_tokens, lora_r, lora_targets, answer_tokens)
    return (p["vision"] + 2 * p["language_matmul"] + 3 * p["language_attention"] + 3 * p["lora"]
            + 2 * p["lm_head"])


def hardware_flops(s: Shape, tokens: int, image_tokens: int, lora_r: int, lora_targets: list[str],
                   answer_tokens: int = 1, checkpointing: bool = False) -> int:
    """training_flops plus the decoder forward recomputed under gradient checkpointing."""
    total = training_flops(s, tokens, image_tokens, lora_r, lora_targets, answer_tokens)
    if checkpointing:
        p = parts(s, tokens, image_tokens, lora_r, lora_targets)
        total += p["language_matmul"] + p["language_attention"] + p["lora"]
    return total


def describe(s: Shape) -> dict:
    return {**asdict(s), "language_params": language_params(s), "vision_params": vision_params(s),
            "merger_params": merger_params(s)}

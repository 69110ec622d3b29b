"""The vision tower's attention as one batched call when every image has the same grid: same output, bitwise.

Why: transformers' Qwen3-VL vision attention (5.17, any attention implementation without "flash" in
its name, sdpa included) cuts the packed patch sequence into images and calls SDPA once per image,
after reading the cut points back from the GPU (`cu_seqlens.tolist()`) in every layer: at batch 64
that is 27 GPU-to-CPU syncs and 1,728 small kernel launches per forward (docs/benchmarks.md). Every
overlay the verifier sees is rendered at one fixed size, so all images of a batch share one grid and
the per-image attentions are the slices of one batched SDPA call over (images, heads, patches,
head_dim): the same kernel on the same rows, so the same bits (tests/test_vision.py checks it against
the per-image loop; bench/throughput.py on the GPU).

How: a forward pre-hook on the vision model reads `grid_thw` once per forward (one sync instead of one
per layer; none when the cut points come made ahead on the CPU, scoring.VisionTables) and, when all
images share one grid, tells the attention layers how many images there are; each attention layer's
forward then takes the batched path. Anything else (images of several sizes,
output_attentions, an attention implementation other than sdpa) runs the library's own code.

The vision tower is frozen in training (LoRA targets the language model only), so this is one forward
per example in training and scoring alike; it changes speed only, so it is on by default
(`train.batched_vision`, `evaluate.batched_vision`) and off only to measure the library's path.
"""
from __future__ import annotations

import types

import torch
import torch.nn.functional as F

VISION_MODEL = "Qwen3VLVisionModel"
VISION_ATTENTION = "Qwen3VLVisionAttention"


class _Batch:
    """What the pre-hook learned about the current forward: images sharing one grid (None: not so)."""

    def __init__(self):
        self.images: int | None = None


def _equal_grids(grid_thw) -> int | None:
    """Number of attention segments (frames) if all have one patch count, else None; one GPU-to-CPU read."""
    rows = grid_thw.tolist()
    sizes = {h * w for _, h, w in rows}
    return sum(t for t, _, _ in rows) if len(sizes) == 1 else None


def _equal_cuts(cu_seqlens) -> int | None:
    """The same from the segments' cut points, when they came made ahead on the CPU: no read of the GPU."""
    sizes = set((cu_seqlens[1:] - cu_seqlens[:-1]).tolist())
    return len(cu_seqlens) - 1 if len(sizes) == 1 else None


def _batched_attention(self, hidden_states, cu_seqlens, position_embeddings=None, max_seqlen=None, **kwargs):
    """Qwen3VLVisionAttention.forward with one SDPA call over all images (they share one grid)."""
    from transformers.models.qwen3_vl.modeling_qwen3_vl import apply_rotary_pos_emb_vision

    images = self._maskgate_batch.images
    if images is None or kwargs.get("output_attentions") or cu_seqlens.shape[0] != images + 1:
        return self._maskgate_per_image(hidden_states, cu_seqlens, position_embeddings=position_embeddings,
                                        max_seqlen=max_seqlen, **kwargs)
    seq = hidden_states.shape[0]
    q, k, v = self.qkv(hidden_states).reshape(seq, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    cos, sin = position_embeddings
    q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)
    # (patches, heads, d) -> (images, heads, patches of one image, d): the library's per-image slices, stacked
    q, k, v = (t.reshape(images, seq // images, self.num_heads, -1).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, scale=self.scaling, is_causal=False)
    return self.proj(out.transpose(1, 2).reshape(seq, -1).contiguous())


def batch_vision_attention(model, where: str = "model", print_fn=print) -> bool:
    """Install the batched path on every Qwen3-VL vision tower of `model` (in place); True if installed."""
    towers = [m for m in model.modules() if type(m).__name__ == VISION_MODEL]
    if not towers:
        raise ValueError(f"{where}: batched_vision found no {VISION_MODEL} in the model")
    done = 0
    for tower in towers:
        if getattr(tower, "_maskgate_batch", None) is not None:
            done += 1
            continue
        implementation = tower.config._attn_implementation
        if implementation != "sdpa":
            print_fn(f"{where}: batched_vision needs the vision tower's attention to be sdpa, not {implementation!r}; "
                     "running the library's path")
            continue
        batch = _Batch()
        for m in tower.modules():
            if type(m).__name__ == VISION_ATTENTION:
                m._maskgate_batch, m._maskgate_per_image = batch, m.forward
                m.forward = types.MethodType(_batched_attention, m)

        def before(module, args, kwargs, batch=batch):
            cuts = kwargs.get("cu_seqlens")  # scoring.VisionTables' image_cu_seqlens, prefix stripped
            if torch.is_tensor(cuts) and cuts.device.type == "cpu":
                batch.images = _equal_cuts(cuts)
                return
            grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
            batch.images = _equal_grids(grid) if torch.is_tensor(grid) else None

        def after(module, args, kwargs, output, batch=batch):
            batch.images = None  # a recompute or another caller outside this forward takes the library's path

        tower.register_forward_pre_hook(before, with_kwargs=True)
        tower.register_forward_hook(after, with_kwargs=True)
        tower._maskgate_batch = batch
        done += 1
    if done:
        print_fn(f"{where}: vision attention batched over images of one grid (bitwise the per-image result)")
    return done == len(towers)


PATCH_EMBED = "Qwen3VLVisionPatchEmbed"


def _patch_matmul(self, hidden_states):
    """Qwen3VLVisionPatchEmbed.forward as one matrix product: its Conv3d's kernel equals its stride, so each
    output is the dot product of one flattened patch with one flattened filter (the same function; only the
    order of the additions may differ, so equal within rounding, not bitwise)."""
    weight = self.proj.weight
    patches = hidden_states.reshape(-1, weight[0].numel()).to(dtype=weight.dtype)
    return F.linear(patches, weight.reshape(weight.shape[0], -1), self.proj.bias)


def patch_embed_as_matmul(model, where: str = "model", print_fn=print) -> int:
    """The vision towers' patch embedding as one matrix product (in place); how many were changed.

    Why: on the GPU cuDNN runs this Conv3d (kernel = stride = one patch) as a generic implicit-GEMM
    convolution, about 20 ms of each batch of 64 images on an H200 (docs/benchmarks.md), where the same
    product as a matrix multiplication is a fraction of a millisecond.
    """
    done = 0
    for m in model.modules():
        if type(m).__name__ != PATCH_EMBED or getattr(m, "_maskgate_patch_matmul", False):
            continue
        proj = m.proj
        if tuple(proj.kernel_size) != tuple(proj.stride) or proj.padding not in ((0, 0, 0), "valid") or proj.groups != 1:
            print_fn(f"{where}: patch_matmul: the patch embedding is not one product per patch; running the library's")
            continue
        m.forward = types.MethodType(_patch_matmul, m)
        m._maskgate_patch_matmul = True
        done += 1
    if not done and not any(type(m).__name__ == PATCH_EMBED for m in model.modules()):
        raise ValueError(f"{where}: patch_matmul found no {PATCH_EMBED} in the model")
    if done:
        print_fn(f"{where}: vision patch embedding as one matrix product")
    return done

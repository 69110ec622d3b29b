"""FP8 matrix multiplies for the frozen linear layers of the language model (H100 and newer).

Why: an H100's FP8 tensor cores run about twice as fast as its bf16 ones, and in LoRA training the
base weights never change, so they can be quantised once instead of on every step. Training with a
frozen base needs two products per layer: the forward `x @ W^T` and the gradient for the layer's
input `g @ W`; the weight gradient is never needed. torchao's `Float8Linear` casts the weight anew on
every call and always computes the weight gradient (torchao 0.17 `float8_linear.py`), which for a
frozen base is a third matmul thrown away. So this module holds its own small layer:

* the weight is stored twice in float8 e4m3 with one scale per output row (for the forward) and one
  scale per input column (for the input gradient), each laid out the way `torch._scaled_mm` needs
  it; the bf16 weight is dropped, so memory stays what bf16 took (2 x 1 byte per weight);
* each call quantises its input (forward) or incoming gradient (backward) per row (per token),
  e4m3 with scale amax/448 (on CUDA through torch.compile, one fused pass; eager if that fails),
  and runs one `torch._scaled_mm` with bf16 output;
* nothing is saved for backward but references to the stored weights.

What it converts (`convert`): the language model's decoder linears (attention and MLP projections,
names under `language_model.layers.`), or the `base_layer` inside a peft LoRA layer there. Never the
LoRA matrices (trained, tiny), `lm_head` (TRL's fused loss reads its weight) or the vision tower
(a tenth of the work, odd widths). Results change within FP8 rounding: compare the loss and
P(ACCEPT) against bf16 before making it a default (bench/throughput.py does).

Off CUDA or on a GPU older than compute capability 8.9 `apply` is a no-op that prints why, so the
same params run the CPU demo and tests unchanged; `FrozenFp8Linear` itself also runs on CPU (torch's
CPU `_scaled_mm`), which the tests use to check its numbers.
"""
from __future__ import annotations

import torch
from torch import nn

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite e4m3fn value
LANGUAGE_LAYERS = "language_model.layers."  # Qwen3-VL's decoder layers (model.model.language_model.layers.N)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x8, scale) with x ~= x8 * scale, one float32 scale per row (amax / 448) of a 2-D tensor."""
    amax = x.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12)  # an all-zero row must not divide by 0
    scale = amax / FP8_MAX
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


_compiled = {}  # device type -> quantize_rows compiled (CUDA), or the eager one after a compile failure


def quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """quantize_rows, on CUDA compiled into one fused pass (eager it is ~6 passes over the activation)."""
    if x.device.type != "cuda":
        return quantize_rows(x)
    fn = _compiled.setdefault("cuda", torch.compile(quantize_rows, dynamic=True))
    try:
        return fn(x)
    except Exception as e:  # a compiler problem must not stop training: fall back to eager, say so once
        if fn is not quantize_rows:
            print(f"fp8: compiling the quantisation failed ({type(e).__name__}: {str(e)[:200]}); running it eager")
            _compiled["cuda"] = quantize_rows
        return quantize_rows(x)


class _FrozenFp8MatMul(torch.autograd.Function):
    """y = x @ W^T in FP8; backward gives the input's gradient only (the weight is frozen)."""

    @staticmethod
    def forward(ctx, x, layer):
        ctx.layer = layer
        x8, sx = quantize(x)
        return torch._scaled_mm(x8, layer.w8.t(), scale_a=sx, scale_b=layer.w_scale, out_dtype=layer.out_dtype)

    @staticmethod
    def backward(ctx, grad):
        layer = ctx.layer
        g8, sg = quantize(grad.contiguous())
        grad_x = torch._scaled_mm(g8, layer.wt8.t(), scale_a=sg, scale_b=layer.wt_scale, out_dtype=layer.out_dtype)
        return grad_x, None


class FrozenFp8Linear(nn.Module):
    """A frozen nn.Linear computed in FP8: see the module docstring. Build with `from_linear`."""

    def __init__(self, in_features: int, out_features: int, out_dtype: torch.dtype):
        super().__init__()
        self.in_features, self.out_features, self.out_dtype = in_features, out_features, out_dtype

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear) -> "FrozenFp8Linear":
        if linear.weight.requires_grad:
            raise ValueError("FrozenFp8Linear is for frozen weights only; this layer's weight requires grad")
        if linear.in_features % 16 or linear.out_features % 16:
            raise ValueError(f"FP8 matmul needs both sizes divisible by 16, got {linear.in_features} x {linear.out_features}")
        w = linear.weight
        layer = cls(linear.in_features, linear.out_features, w.dtype)
        w8, w_scale = quantize_rows(w)  # (out, in), a scale per output row: forward's b = w8.t() is column-major
        wt8, wt_scale = quantize_rows(w.t().contiguous())  # (in, out), a scale per input column: for g @ W
        layer.register_buffer("w8", w8)
        layer.register_buffer("w_scale", w_scale.t().contiguous())  # (1, out): _scaled_mm's scale_b shape
        layer.register_buffer("wt8", wt8)
        layer.register_buffer("wt_scale", wt_scale.t().contiguous())  # (1, in)
        layer.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = _FrozenFp8MatMul.apply(x.reshape(-1, shape[-1]).contiguous(), self)
        y = y.reshape(*shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8=e4m3 rowwise, frozen"


def unavailable(device) -> str | None:
    """Why FP8 matmuls cannot run on `device` (None when they can)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return f"device {device} is not a CUDA GPU"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        return f"{torch.cuda.get_device_name(device)} (compute capability {major}.{minor}) has no FP8 tensor cores"
    return None


def targets(model: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, attribute, linear) for each frozen decoder linear of the language model (see the module docstring)."""
    out = []
    for name, module in model.named_modules():
        if LANGUAGE_LAYERS not in name:
            continue
        for attr, child in module.named_children():
            if type(child) is not nn.Linear or attr.startswith("lora_") or ".lora_" in name:
                continue
            if child.weight.requires_grad:
                continue  # trained in full (peft modules_to_save): leave it in bf16
            out.append((module, attr, child))
    return out


def convert(model: nn.Module) -> int:
    """Replace every target linear by a FrozenFp8Linear in place; the number replaced."""
    found = targets(model)
    for parent, attr, linear in found:
        setattr(parent, attr, FrozenFp8Linear.from_linear(linear))
    return len(found)


def apply(model: nn.Module, device, where: str, print_fn=print) -> bool:
    """`convert` when the device has FP8 tensor cores, else a no-op that says why; True if converted."""
    reason = unavailable(device)
    if reason:
        print_fn(f"{where}: fp8 requested but {reason}; running in {next(model.parameters()).dtype} instead")
        return False
    n = convert(model)
    if not n:
        raise ValueError(f"{where}: fp8 found no frozen linear layer under '{LANGUAGE_LAYERS}' to convert")
    torch.cuda.empty_cache()  # the bf16 weights just freed
    print_fn(f"{where}: {n} language-model linear layers run in FP8 (e4m3, rowwise scales)")
    return True

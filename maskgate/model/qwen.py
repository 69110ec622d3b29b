"""Model presets, an offline tiny Qwen3-VL, and one loader for both.

Why a tiny model: CI and the demo run on 2 CPU cores with no network, yet the code that trains and
scores must be the code that runs on the GPU. So the tiny model uses the real transformers classes
(`Qwen3VLForConditionalGeneration`, `Qwen3VLProcessor` with `Qwen2VLImageProcessor`,
`Qwen2TokenizerFast`, `Qwen3VLVideoProcessor`) and the real chat template, with random weights and a
small byte-level BPE tokenizer trained here. Everything is built from a seed, so the same seed and
sizes give byte-identical files and a DVC stage that builds it is reproducible.

The chat template is `maskgate/model/qwen3_vl.jinja`, a verbatim copy of trl 1.15's
`trl/chat_templates/qwen3_vl.jinja` (the original Qwen3-VL template), shipped as package data so
the tiny model does not depend on trl's file layout; tests check the copy still matches trl's.

Why the image bounds: the project renders every image at one square size S, a multiple of 32, and
the processor must keep it as is, so an image costs exactly (S/16)^2/4 tokens (patch 16, merge 2).
The hub processor's minimum (256x256) would upscale small demo images, so `load` widens the bounds.

Weights load only from safetensors, and no remote code runs: a `.bin` weights file is a pickle,
and loading a pickle can run code, so a local folder without safetensors weights is refused by
name (`require_safetensors`) before any library sees it, and hub models are asked for safetensors
(`use_safetensors=True`). The concrete Qwen3-VL classes are used, never `Auto*` classes with
`trust_remote_code`, so a folder's `auto_map` pointing at custom code is never followed.

Unsloth is never imported here at module level: on a machine without a GPU `import unsloth` patches
transformers and trl into a CPU mode whose vision classes raise (training.py: the GPU path).
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, trainers
from tokenizers.models import BPE
from transformers import (
    Qwen2TokenizerFast,
    Qwen2VLImageProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

from maskgate.utils import hub
from maskgate.prompt import Prompt


@dataclass(frozen=True)
class Preset:
    hub_id: str | None  # for the transformers path
    unsloth_id: str | None  # for the unsloth path (pre-quantised 4-bit weights)


PRESETS = {
    "qwen3-vl-8b": Preset("Qwen/Qwen3-VL-8B-Instruct", "unsloth/Qwen3-VL-8B-Instruct-unsloth-bnb-4bit"),
    "tiny": Preset(None, None),  # built locally by build_tiny; load the folder it wrote
    # Qwen3-VL-8B's exact shape with random weights and the tiny tokenizer, built locally like tiny:
    # speed and memory do not depend on weight values, so GPU benchmarks need no download. Not a verifier.
    "random-8b": Preset(None, None),
}
LOCAL_PRESETS = ("tiny", "random-8b")

PATCH_SIZE = 16
MERGE_SIZE = 2
MIN_PIXELS = (PATCH_SIZE * MERGE_SIZE) ** 2  # one merged token: no small image is upscaled
MAX_PIXELS = 4096 * 4096  # the hub processor's own upper bound

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Generic English for the tiny tokenizer, so arbitrary referring expressions split into word-sized
# pieces rather than bytes. Fixed here (not read from the system) so the build is reproducible.
_WORDS = """
the a an and or but not no of in on at to from with without by for as is are was were be been
this that these those it its they them their there here which who whose what where when how all
any both each every few many more most other some such only same than too very one two three four
five six seven eight nine ten first second third last next left right top bottom middle center
front back behind near far above below under over between beside inside outside around across
along against next to close away up down side corner edge part half whole group pair set row
person people man men woman women boy girl child children kid baby player rider skier surfer
bicycle car motorcycle airplane bus train truck boat traffic light fire hydrant stop sign
parking meter bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella
handbag tie suitcase frisbee skis snowboard sports ball kite baseball bat glove skateboard
surfboard tennis racket bottle wine glass cup fork knife spoon bowl banana apple sandwich orange
broccoli carrot hot pizza donut cake chair couch potted plant bed dining table toilet tv laptop
mouse remote keyboard cell phone microwave oven toaster sink refrigerator book clock vase
scissors teddy hair drier toothbrush tree grass sky road street building wall window door floor
ground water sea snow field fence house shirt hat jacket shoe plate food box bag sign pole
red green blue yellow white black brown gray grey pink purple orange dark light bright small
large big little tall short long wide narrow round square old young new empty full open closed
standing sitting walking running lying holding wearing carrying riding eating looking playing
facing leaning hanging parked covered made colored striped wooden metal plastic glass
""".split()


@dataclass(frozen=True)
class TinySize:
    """Size knobs of the tiny model; defaults are small so tests stay fast on 2 CPU cores."""

    vocab_size: int = 2048  # BPE target; the model's vocabulary is the trained tokenizer's length
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    num_key_value_heads: int = 1
    head_dim: int = 32
    vision_hidden_size: int = 64
    vision_intermediate_size: int = 128
    vision_depth: int = 2
    vision_num_heads: int = 2
    deepstack_visual_indexes: tuple[int, ...] = (0,)  # vision layers feeding the first text layers
    num_position_embeddings: int = 256  # a square: the learned 2-D position grid is 16 x 16

    embedding_rows: int = 0  # rows of the embedding and output matrices; 0 = the tokenizer's length
    # std of the language model's initial weights (embeddings, projections, lm_head); the vision tower keeps
    # 0.02. Qwen's 0.02 suits hidden sizes in the thousands; at hidden 64 it leaves attention uniform and the
    # MLPs linear, and a from-scratch model sits on a long loss plateau (bench/demo_learning.py): about
    # 1/sqrt(hidden_size) learns several times faster.
    initializer_range: float = 0.02

    def __post_init__(self):
        if self.embedding_rows and self.embedding_rows < self.vocab_size:
            raise ValueError("embedding_rows must be 0 or at least vocab_size")
        if self.head_dim % 2 or self.head_dim < 8:
            raise ValueError(f"head_dim must be even and at least 8, got {self.head_dim}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        if (self.vision_hidden_size // self.vision_num_heads) % 4 or self.vision_hidden_size % self.vision_num_heads:
            raise ValueError("vision head dim (vision_hidden_size / vision_num_heads) must be a multiple of 4")
        if any(not 0 <= i < self.vision_depth for i in self.deepstack_visual_indexes):
            raise ValueError(f"deepstack_visual_indexes {self.deepstack_visual_indexes} must lie below vision_depth")
        if len(self.deepstack_visual_indexes) > self.num_hidden_layers:
            raise ValueError("more deepstack indexes than text layers: the extra ones would be ignored")
        if round(self.num_position_embeddings**0.5) ** 2 != self.num_position_embeddings:
            raise ValueError("num_position_embeddings must be a perfect square")


# Qwen3-VL-8B-Instruct's config.json (text: 36 layers of 4096, GQA 32/8 heads of 128; vision: 27 layers
# of 1152, deepstack at 8/16/24; 151,936 embedding rows), as TinySize fields for the random-8b preset.
QWEN3_VL_8B_SIZE = dict(
    hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
    num_key_value_heads=8, head_dim=128, vision_hidden_size=1152, vision_intermediate_size=4304,
    vision_depth=27, vision_num_heads=16, deepstack_visual_indexes=(8, 16, 24),
    num_position_embeddings=2304, embedding_rows=151936,
)


def preset_size(preset: str, overrides: dict | None = None) -> dict:
    """TinySize fields of a locally built preset: its own shape, then `overrides` (params model.tiny)."""
    if preset not in LOCAL_PRESETS:
        raise ValueError(f"preset {preset!r} is not built locally")
    return {**(QWEN3_VL_8B_SIZE if preset == "random-8b" else {}), **(overrides or {})}


def image_token_count(size: int) -> int:
    """LLM image tokens for an S x S image under the bounds set here: (S/16)^2 / 4."""
    if size % (PATCH_SIZE * MERGE_SIZE) or not MIN_PIXELS <= size * size <= MAX_PIXELS:
        raise ValueError(f"image size must be a multiple of 32 between 32 and 4096, got {size}")
    return (size // PATCH_SIZE) ** 2 // MERGE_SIZE**2


def chat_template() -> str:
    """The original Qwen3-VL chat template (copied from trl, see the module docstring)."""
    return resources.files("maskgate.model").joinpath("qwen3_vl.jinja").read_text(encoding="utf-8")


def mrope_section(head_dim: int) -> list[int]:
    """Split head_dim/2 rotary frequencies over (time, height, width) in Qwen3-VL's 24:20:20 ratio."""
    half = head_dim // 2
    hw = half * 20 // 64
    return [half - 2 * hw, hw, hw]


def tiny_corpus(prompt: Prompt) -> list[str]:
    """Texts the tiny tokenizer learns from: chat roles, the prompt, the answers, generic English.

    The prompt and answers are repeated so BPE merges each answer into one token.
    """
    template_words = ["system", "user", "assistant", "Picture", "Video"]
    prompt_texts = [prompt.system, prompt.user_text(" ".join(_WORDS[:12]))]
    sentence = " ".join(_WORDS)  # so words also learn their space-prefixed form, as inside a query
    return _WORDS + [sentence] * 3 + template_words * 50 + prompt_texts * 50 + list(prompt.answers) * 200


def train_tokenizer(corpus: list[str], vocab_size: int) -> Qwen2TokenizerFast:
    """A byte-level BPE with Qwen2's pre-tokenizer, wrapped as the real Qwen tokenizer class."""
    bpe = Tokenizer(BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer)
    model = json.loads(bpe.to_str())["model"]
    return Qwen2TokenizerFast(
        vocab=model["vocab"],
        merges=[tuple(m) for m in model["merges"]],
        eos_token="<|im_end|>",  # as Qwen3-VL-Instruct: a chat turn ends generation
        pad_token="<|endoftext|>",
        extra_special_tokens=list(SPECIAL_TOKENS[1:]),
        model_max_length=262144,
    )


def _check_answers_single_token(tokenizer, answers: tuple[str, ...]) -> None:
    for answer in answers:
        ids = tokenizer(answer, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise ValueError(f"tiny tokenizer splits answer {answer!r} into {len(ids)} tokens; raise vocab_size")


def tiny_config(size: TinySize, tokenizer) -> Qwen3VLConfig:
    """A Qwen3-VL config of the given size whose token ids come from `tokenizer`."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = dict(
        vocab_size=size.embedding_rows or len(tokenizer),
        hidden_size=size.hidden_size,
        intermediate_size=size.intermediate_size,
        num_hidden_layers=size.num_hidden_layers,
        num_attention_heads=size.num_attention_heads,
        num_key_value_heads=size.num_key_value_heads,
        head_dim=size.head_dim,
        max_position_embeddings=262144,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 5_000_000.0,
            "mrope_section": mrope_section(size.head_dim),
            "mrope_interleaved": True,
        },
        pad_token_id=ids["<|endoftext|>"],
        initializer_range=size.initializer_range,
    )
    vision = dict(
        depth=size.vision_depth,
        hidden_size=size.vision_hidden_size,
        intermediate_size=size.vision_intermediate_size,
        num_heads=size.vision_num_heads,
        patch_size=PATCH_SIZE,
        spatial_merge_size=MERGE_SIZE,
        out_hidden_size=size.hidden_size,
        deepstack_visual_indexes=list(size.deepstack_visual_indexes),
        num_position_embeddings=size.num_position_embeddings,
    )
    return Qwen3VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def set_image_bounds(processor: Qwen3VLProcessor) -> Qwen3VLProcessor:
    """Keep any S x S image with S a multiple of 32 (up to 4096) at its size: see the module docstring."""
    processor.image_processor.size = {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS}
    return processor


def tiny_processor(prompt: Prompt, vocab_size: int) -> Qwen3VLProcessor:
    """The real processor classes around a tokenizer trained on `tiny_corpus(prompt)`."""
    tokenizer = train_tokenizer(tiny_corpus(prompt), vocab_size)
    _check_answers_single_token(tokenizer, prompt.answers)
    image_processor = Qwen2VLImageProcessor(
        patch_size=PATCH_SIZE,
        temporal_patch_size=2,
        merge_size=MERGE_SIZE,
        image_mean=[0.5, 0.5, 0.5],  # as Qwen3-VL's preprocessor_config.json
        image_std=[0.5, 0.5, 0.5],
        min_pixels=MIN_PIXELS,
        max_pixels=MAX_PIXELS,
    )
    return Qwen3VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=Qwen3VLVideoProcessor(),
        chat_template=chat_template(),
    )


def build_tiny(out_dir: str | Path, prompt: Prompt, seed: int = 0, device: str = "cpu",
               dtype: torch.dtype = torch.float32, **size) -> None:
    """Save a random tiny Qwen3-VL (safetensors) and its processor to `out_dir`.

    `size` holds TinySize fields. The same prompt, seed and sizes give byte-identical files.
    `device`/`dtype`: where to draw the weights (a full-size model is drawn on the GPU in bf16).
    """
    tiny = TinySize(**size)
    processor = tiny_processor(prompt, tiny.vocab_size)
    config = tiny_config(tiny, processor.tokenizer)
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # draw in the target dtype: a full-size model never exists in fp32
    try:
        with torch.device(device):
            model = Qwen3VLForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(default)
    out = Path(out_dir)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "tiny_size.json").write_text(json.dumps({"seed": seed, **asdict(tiny)}, indent=1) + "\n")


def source(preset_or_dir: str | Path, backend: str = "transformers", load_in_4bit: bool = False) -> str:
    """A local folder or a hub id as is, or the hub repository of a preset.

    For a preset: Unsloth's pre-quantised repository when `backend` is "unsloth" and `load_in_4bit`,
    else the original repository (Unsloth's 16-bit path loads it by its exact name).
    """
    if Path(preset_or_dir).is_dir():
        return str(preset_or_dir)
    name = str(preset_or_dir)
    if name in PRESETS:
        preset = PRESETS[name]
        repo = preset.unsloth_id if backend == "unsloth" and load_in_4bit else preset.hub_id
        if repo is None:
            raise ValueError(f"preset {name!r} is built locally: run build_tiny(out_dir, prompt), then load that folder")
        return repo
    if hub.is_repo_id(name):
        return name
    raise ValueError(f"{name!r} is neither a folder, a hub id (org/name) nor a preset ({', '.join(PRESETS)})")


def parameter_count(src: str, revision: str | None = None) -> int:
    """Parameters of the model a folder or hub repository holds, from its config.json alone (no weights)."""
    with hub.errors(f"config.json of {src}"):
        config = Qwen3VLConfig.from_pretrained(src, revision=revision)
    with torch.device("meta"):
        model = Qwen3VLForConditionalGeneration(config)
    return sum(p.numel() for p in model.parameters())


# The largest model trained off a GPU: the tiny preset has about 1M parameters; an 8B one on 2 CPU cores
# would take weeks per epoch.
CPU_MAX_PARAMETERS = 500_000_000


def check_device(src: str, revision: str | None, cuda: bool) -> None:
    """ValueError in one line when the model at `src` is too large to train without a CUDA GPU."""
    if cuda:
        return
    n = parameter_count(src, revision)
    if n > CPU_MAX_PARAMETERS:
        raise ValueError(f"the base model {src} has {n / 1e9:.1f}B parameters and no CUDA GPU is available: "
                         "train it on a GPU (docs/runpod.md), or set model.preset: tiny for a CPU run")


def require_safetensors(folder: str | Path, what: str = "model", weights: str = "*.safetensors") -> None:
    """ValueError unless the local `folder` holds its weights as safetensors (`weights`: the file pattern).

    A hub id (not a local folder) passes: the loaders ask the hub for safetensors. Why refuse rather
    than let the library choose: transformers and peft fall back to a `.bin` pickle when no
    safetensors file is there (peft even with `use_safetensors=True`).
    """
    folder = Path(folder)
    if not folder.is_dir() or any(folder.glob(weights)):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl"))
    found = f" (it has {', '.join(pickles)})" if pickles else ""
    raise ValueError(f"{what} folder {folder} has no safetensors weights ({weights}){found}: maskgate loads "
                     "weights only from safetensors, because a .bin file is a pickle and loading it can run code")


def load(preset_or_dir: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
         revision: str | None = None, quantization=None):
    """(model in eval mode, processor) from a folder, hub id or preset, through transformers only.

    `revision`: the commit of a hub repository (hub.resolve). `quantization`: a transformers
    quantization config, to load a full-precision base in 4 bits as Unsloth's QLoRA did.
    """
    src = source(preset_or_dir)
    require_safetensors(src, "base model")
    with hub.errors(f"model {src}"):
        model = Qwen3VLForConditionalGeneration.from_pretrained(
            src, revision=revision, dtype=dtype, device_map=str(device), use_safetensors=True,
            **({"quantization_config": quantization} if quantization is not None else {}))
    return model.eval(), load_processor(src, revision)


def load_processor(src: str | Path, revision: str | None = None) -> Qwen3VLProcessor:
    with hub.errors(f"processor of {src}"):
        processor = Qwen3VLProcessor.from_pretrained(str(src), revision=revision)
    return set_image_bounds(processor)


def prompt_tokens(processor, prompt: Prompt) -> dict:
    """The token ids of the prompt (for a fixed probe query) and of each answer, as this processor gives them.

    verifier.json records them at training; a base whose tokenizer gives other ids is refused at loading,
    since the adapter would then read another prompt than it was trained on.
    """
    from maskgate.model.batching import answer_ids, prompt_text

    probe = "the two red cars on the left"
    return {"probe_query": probe,
            "prompt": processor.tokenizer(prompt_text(processor, prompt, probe)).input_ids,
            "answers": [answer_ids(processor.tokenizer, a) for a in prompt.answers]}

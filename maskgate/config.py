"""The typed settings: one frozen dataclass per section of params.yaml, built once per stage.

params.yaml is the only place a setting has a value: no field here has a default, so a key missing
from the file is an error, as is a key the file has and the dataclass does not (a typo such as
`-S evaluate.target_precison=0.9` must not pass silently). Errors are one line naming the file,
the key and the reason (`ParamsError`); stage scripts print it and exit 1.

pydantic checks the types (strict: the string "8" is not an int, 1 is accepted as a float);
the rules that tie keys together (a batch the micro-batch divides, a prompt that names its answers)
live with the code that needs them and are checked in `__post_init__` where they concern one section.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Union

import yaml
from pydantic import ConfigDict, TypeAdapter, ValidationError
from pydantic import StrictBool as Bool
from pydantic import StrictFloat as Float  # takes an int too: `lr: 1` is 1.0
from pydantic import StrictInt as Int
from pydantic import StrictStr as Str
from pydantic.dataclasses import dataclass

from maskgate.prompt import Prompt

RGB = tuple[Int, Int, Int]


class ParamsError(ValueError):
    """A params file, section or key that is missing, unknown or of the wrong kind."""


# extra="forbid": unknown keys are errors. The Strict types: no silent "8" -> 8 or 1 -> True.
SECTION = ConfigDict(extra="forbid", frozen=True)


@dataclass(config=SECTION)
class Data:
    source: Literal["hub", "local", "demo"]
    path: Str  # a folder in MaskGroups row format (rows file + images/), for source=local
    hub_repo: Str
    hub_revision: Str
    hub_train_split: Str
    hub_test_split: Str
    hub_images: Str
    demo_images: Int


@dataclass(config=SECTION)
class Prepare:
    val_fraction: Float
    max_bad_fraction: Float
    mask_size_mismatch: Literal["rescale", "skip"]


@dataclass(config=SECTION)
class Negatives:
    per_positive: Int
    hard_fraction: Float
    max_iou: Float
    missing_instance: Int
    extra_instance: Int
    pool_hard: Bool  # fill hard slots from the image's own gt_mask_pool when other rows' groups run out
    max_easy_fill_share: Float  # the stage warns when more of the hard slots than this are filled with easy ones

    def __post_init__(self):
        if not 3 <= self.per_positive <= 6:
            raise ValueError(f"negatives.per_positive must be between 3 and 6, got {self.per_positive}")
        if not 0.0 <= self.hard_fraction <= 1.0:
            raise ValueError(f"negatives.hard_fraction must be in [0, 1], got {self.hard_fraction}")
        if not 0.0 <= self.max_easy_fill_share <= 1.0:
            raise ValueError(f"negatives.max_easy_fill_share must be in [0, 1], got {self.max_easy_fill_share}")
        for kind in ("missing_instance", "extra_instance"):
            if getattr(self, kind) < 0:
                raise ValueError(f"negatives.{kind} must be a whole number >= 0 (0 = off), got {getattr(self, kind)}")


@dataclass(config=SECTION)
class Render:
    size: Int
    fill_color: RGB
    fill_alpha: Float
    outline_color: RGB
    outline_width: Int
    jpeg_quality: Int
    shard_size: Int
    workers: Int
    style: Literal["fill", "keep_colours"]  # keep_colours: the group's own pixels, the rest desaturated and dimmed
    background_dim: Float  # keep_colours: the grey level outside the group is multiplied by this
    zoom: Bool  # the whole image beside a zoomed crop around the group, in the same canvas
    zoom_context: Float  # zoom: the crop spans this many times the group's bounding box

    def __post_init__(self):
        if self.size < 32 or self.size % 32:
            raise ValueError(f"render.size must be a multiple of 32 (Qwen3-VL merges 32 px cells), got {self.size}")
        if not 0.0 <= self.fill_alpha <= 1.0:
            raise ValueError(f"render.fill_alpha must be in [0, 1], got {self.fill_alpha}")
        if not 0.0 <= self.background_dim <= 1.0:
            raise ValueError(f"render.background_dim must be in [0, 1], got {self.background_dim}")
        if self.zoom_context < 1.0:
            raise ValueError(f"render.zoom_context must be >= 1 (the crop holds the whole group), got {self.zoom_context}")


@dataclass(config=SECTION)
class Model:
    preset: Str  # checked against maskgate.model.qwen.PRESETS where the model is built
    revision: Str
    revision_4bit: Str
    tiny: dict  # size knobs of the tiny preset (maskgate.model.qwen.TinySize fields), checked by preset_size


@dataclass(config=SECTION)
class Lora:
    r: Int
    alpha: Float
    dropout: Float
    targets: Union[list[Str], Str]  # peft target_modules: suffixes, a regex, or "all-linear"
    modules_to_save: list[Str]


@dataclass(config=SECTION)
class Train:
    backend: Literal["auto", "hf", "unsloth"]
    batch_size: Int
    micro_batch_size: Union[Int, Literal["auto"]]
    gpus: Int
    epochs: Int
    warmup_ratio: Float
    lr_scheduler: Str
    weight_decay: Float
    max_grad_norm: Float
    max_text_tokens: Int
    lora: Lora
    gradient_checkpointing: Union[Bool, Literal["auto"]]
    load_in_4bit: Bool
    save_steps: Int
    keep_checkpoints: Int
    eval_steps: Int
    eval_examples: Int
    logging_steps: Int
    dataloader_workers: Int
    cpu_threads: Int
    batched_vision: Bool
    patch_matmul: Bool
    last_layer_at_answer: Bool

    def __post_init__(self):
        if self.micro_batch_size != "auto" and self.micro_batch_size < 1:
            raise ValueError(f"train.micro_batch_size must be a positive integer or auto, got {self.micro_batch_size}")
        for key in ("batch_size", "gpus", "epochs", "max_text_tokens", "save_steps", "logging_steps"):
            if getattr(self, key) < 1:
                raise ValueError(f"train.{key} must be a positive integer, got {getattr(self, key)}")


@dataclass(config=SECTION)
class Evaluate:
    """Also the gate's scoring settings (`maskgate verify --params`)."""

    batch_size: Union[Int, Literal["auto"]]
    workers: Int
    prefetch: Bool
    overlap: Bool
    merge_adapter: Bool
    compile: Bool
    batched_vision: Bool
    compile_vision: Bool
    patch_matmul: Bool
    last_layer_at_answer: Bool
    target_precision: Float
    thresholds: list[Float]
    calibration_fraction: Float  # share of val images the threshold is chosen on; 0 = all of val (measured there too)
    bootstrap: Int  # resamples (by image) of the precision interval at the operating point; 0 = no interval
    confidence: Float  # the interval's level

    def __post_init__(self):
        if (self.batch_size != "auto" and self.batch_size < 1) or self.workers < 0:
            raise ValueError(f"evaluate.batch_size must be >= 1 or auto and evaluate.workers >= 0, got "
                             f"{self.batch_size} and {self.workers}")
        if not 0.0 <= self.calibration_fraction < 1.0:
            raise ValueError(f"evaluate.calibration_fraction must be in [0, 1), got {self.calibration_fraction}")
        if self.bootstrap < 0 or not 0.0 < self.confidence < 1.0:
            raise ValueError(f"evaluate.bootstrap must be >= 0 and evaluate.confidence in (0, 1), got "
                             f"{self.bootstrap} and {self.confidence}")


@dataclass(config=SECTION)
class Limits:
    """Bounds on one input line or row, checked before anything is allocated for it (docs/gate.md, "Limits").

    Read by the gate (`maskgate verify --params`) and by prepare; a line past one is a bad line naming the key.
    """

    max_line_bytes: Int
    max_image_pixels: Int
    max_mask_pixels: Int
    max_masks_per_group: Int
    max_polygon_vertices: Int
    max_polygon_perimeter: Int
    polygon_margin: Float

    def __post_init__(self):
        for key in ("max_line_bytes", "max_image_pixels", "max_mask_pixels", "max_masks_per_group",
                    "max_polygon_vertices", "max_polygon_perimeter"):
            if getattr(self, key) < 1:
                raise ValueError(f"limits.{key} must be a positive integer, got {getattr(self, key)}")
        if self.polygon_margin < 0:
            raise ValueError(f"limits.polygon_margin must be >= 0, got {self.polygon_margin}")


# The gate's limits where no params file is read (`maskgate verify` outside the project, the Python call
# without `limits`), as speedups.PLAIN stands in for evaluate's settings there. params.yaml's `limits`
# holds the same values (tests/test_limits.py checks), so a bare run refuses what a project run refuses.
GATE_LIMITS = Limits(max_line_bytes=16_777_216, max_image_pixels=80_000_000, max_mask_pixels=80_000_000,
                     max_masks_per_group=1000, max_polygon_vertices=100_000, max_polygon_perimeter=2_000_000,
                     polygon_margin=1.0)


@dataclass(config=SECTION)
class AuditSample:
    n: Int


@dataclass(config=SECTION)
class Params:
    seed: Int
    lr: Float  # top level, so `dvc exp run -S lr=...` works as typed
    data: Data
    prepare: Prepare
    negatives: Negatives
    prompt: Prompt
    render: Render
    model: Model
    train: Train
    evaluate: Evaluate
    audit_sample: AuditSample
    limits: Limits


def from_dict(params: dict, where: str = "params") -> Params:
    """`params` (params.yaml's mapping) as typed settings; ParamsError naming the bad keys."""
    return from_section(Params, params, where)


def from_section(kind: type, section: dict, where: str):
    """A mapping as `kind`: the whole file, or one section recorded in an output (verifier.json's render)."""
    try:
        return TypeAdapter(kind).validate_python(section)
    except ValidationError as e:
        raise ParamsError(f"{where}: {describe(e)}") from None


def describe(e: ValidationError) -> str:
    """pydantic's errors as one line: `evaluate.target_precison: unknown key; train.gpus: ...`."""
    by_key: dict[str, list[str]] = {}
    for err in e.errors():
        # a union reports each alternative under its type's name (bool, literal['auto']): keep the key path
        key = ".".join(str(p) for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p in UNION_ARMS)))
        kind = err["type"]
        if kind == "unexpected_keyword_argument":
            msg = "unknown key"
        elif kind in ("missing", "missing_argument"):
            msg = "missing"
        elif kind == "value_error":  # a rule of __post_init__: its message names the key itself
            by_key.setdefault(err["msg"].removeprefix("Value error, "), [])
            continue
        else:
            msg = f"{err['msg'].lower()}, got {err.get('input')!r}"
        by_key.setdefault(key or "(top level)", []).append(msg)
    out = [f"{key}: {' or '.join(dict.fromkeys(msgs))}" if msgs else key for key, msgs in by_key.items()]
    return "; ".join(out[:4]) + (f"; and {len(out) - 4} more" if len(out) > 4 else "")


UNION_ARMS = {"str", "bool", "int", "float"}


def read_yaml(path: str | Path) -> dict:
    """A params file as a mapping; ParamsError naming the file when it is missing or not YAML.

    Read as YAML 1.2, as DVC reads and writes it (ruamel.yaml): `dvc exp run -S lr=1e-4` writes
    `lr: 1e-4`, a number there, and a string to YAML 1.1 readers such as PyYAML.
    """
    from ruamel.yaml import YAML, YAMLError

    try:
        with open(path, encoding="utf-8") as f:
            params = YAML(typ="safe", pure=True).load(f)
    except OSError as e:
        raise ParamsError(f"params: cannot read {path}: {e.strerror or e}") from None
    except (YAMLError, UnicodeDecodeError) as e:
        raise ParamsError(f"params: {path} is not valid YAML: {' '.join(str(e).split())}") from None  # one line
    if not isinstance(params, dict):
        raise ParamsError(f"params: {path} must hold a mapping of sections, got {type(params).__name__}")
    return params


def load(path: str | Path = "params.yaml") -> Params:
    """params.yaml as typed settings. Stage scripts call it first, so a bad file ends the stage in one line."""
    return from_dict(read_yaml(path), str(path))


def overlay(base: dict, changes: dict, prefix: str = "") -> dict:
    """`base` with `changes` (a nested mapping of the keys that differ) applied; unknown keys are errors."""
    out = dict(base)
    for key, value in changes.items():
        if key not in base:
            raise ParamsError(f"overlay: {prefix}{key} is not a key of the params it changes")
        deeper = isinstance(value, dict) and isinstance(base[key], dict) and value
        out[key] = overlay(base[key], value, f"{prefix}{key}.") if deeper else value
    return out


def flags(changes: dict, prefix: str = "") -> list[str]:
    """`changes` as `dvc exp run -S key=value` arguments (values in YAML flow style)."""
    out = []
    for key, value in changes.items():
        if isinstance(value, dict) and value:
            out += flags(value, f"{prefix}{key}.")
        else:
            out += ["-S", f"{prefix}{key}={_flow(value)}"]
    return out


def _flow(value) -> str:
    """A value as DVC's `-S` parser reads it: YAML scalars, lists without spaces."""
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_flow(v) for v in value) + "]"
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def main(argv: list[str] | None = None) -> int:
    """`python -m maskgate.config flags FILE`: a settings file as -S flags (scripts/demo.sh uses it);
    `python -m maskgate.config check [PARAMS]`: check a params file and say what is wrong."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m maskgate.config", description=main.__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    fl = sub.add_parser("flags", help="print a settings file's keys as `-S key=value` lines, one per line")
    fl.add_argument("file", type=Path)
    fl.add_argument("--params", type=Path, default=Path("params.yaml"), help="the params they change (checked)")
    ck = sub.add_parser("check", help="check a params file against the typed settings")
    ck.add_argument("params", type=Path, nargs="?", default=Path("params.yaml"))
    args = ap.parse_args(argv)
    try:
        if args.command == "check":
            load(args.params)
            print(f"{args.params}: ok")
            return 0
        changes = read_yaml(args.file)
        from_dict(overlay(read_yaml(args.params), changes), f"{args.params} with {args.file}")
    except ParamsError as e:
        print(e, file=sys.stderr)
        return 1
    print("\n".join(flags(changes)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

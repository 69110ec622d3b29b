"""maskgate.model.train: backend choice, batch arithmetic, resume after an interruption, adapter files, curves."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from maskgate import config
from maskgate.model import checkpoints
from maskgate.model import train as training
from maskgate.model.batching import to_example
from maskgate.model.train import TrainJob
from tests.conftest import TINY_MODEL, project_params, settings, tiny_train

ROOT = Path(__file__).resolve().parents[1]


def tiny_params(**train) -> dict:
    """params.yaml switched to the demo data, the tiny model and a few-step training."""
    p = project_params()
    p["data"].update(source="demo", demo_images=12)
    p["prepare"]["val_fraction"] = 0.25
    p["negatives"]["per_positive"] = 3
    p["render"].update(size=64, workers=1)
    p["model"] = dict(TINY_MODEL)
    p["lr"] = 1e-3
    p["train"] = tiny_train(**train)
    return p


def job(params: dict) -> TrainJob:
    return TrainJob.of(settings(params))


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    return render_tiny(tiny_params(), tmp_path_factory.mktemp("training_data"))


def render_tiny(params: dict, work: Path) -> Path:
    """prepare, negatives and render of `params` into `work`: the rendered folder."""
    from maskgate.data import negatives, prepare
    from maskgate.render import shards

    s = settings(params)
    prepare.prepare(s.data, s.prepare, s.seed, work / "prepared", s.limits)
    negatives.build(work / "prepared", work / "negatives", s.negatives, s.seed)
    shards.render(work / "prepared", work / "negatives", work / "rendered", s.render, s.prompt)
    return work / "rendered"


def run(params, rendered, folder: Path, callbacks=None) -> dict:
    return training.train(job(params), rendered, folder / "model", folder / "checkpoints", folder / "live",
                          backend="hf", callbacks=callbacks)


@pytest.fixture(scope="module")
def straight(rendered, tmp_path_factory):
    """One uninterrupted run: (folder, summary)."""
    folder = tmp_path_factory.mktemp("straight")
    return folder, run(tiny_params(), rendered, folder)


class Interrupt(Exception):
    pass


def interrupt_at(step: int):
    from transformers import TrainerCallback

    class Stop(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step:
                raise Interrupt(f"interrupted at step {step}")

    return Stop()


def adapter_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model" / "adapter" / "adapter_model.safetensors"))


def assert_trained_alike(a: Path, b: Path):
    """Two runs' logged losses and adapters equal to rounding (a setting that changes only the order of additions)."""
    import numpy as np
    import torch

    loss = "live/plots/metrics/train/loss.tsv"
    ours, theirs = ([float(line.split("\t")[-1]) for line in (folder / loss).read_text().splitlines()[1:]]
                    for folder in (a, b))
    assert len(ours) > 2
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)
    ours, theirs = adapter_weights(a), adapter_weights(b)
    assert ours.keys() == theirs.keys() and all(torch.allclose(ours[k], theirs[k], rtol=1e-4, atol=1e-6) for k in ours)


def test_auto_picks_hf_on_cpu_without_importing_unsloth_or_transformers(tmp_path):
    """In a fresh interpreter, as the train stage runs: no GPU here, so auto -> hf, unsloth never imported."""
    params = tmp_path / "p.yaml"
    params.write_text(yaml.safe_dump(tiny_params(backend="auto") | {"model": dict(TINY_MODEL, preset="qwen3-vl-8b")}))
    code = (
        "import dataclasses, sys\n"
        "from maskgate import config\n"
        "from maskgate.model import train as training\n"
        "from maskgate.model.backend import resolve_backend\n"
        f"p = config.load({str(params)!r})\n"
        "assert 'transformers' not in sys.modules, 'maskgate.model.train imports transformers at import time'\n"
        "b = resolve_backend(p.train, p.model.preset)\n"
        "print(b, 'unsloth' in sys.modules, 'transformers' in sys.modules)\n"
        "try:\n"
        "    resolve_backend(dataclasses.replace(p.train, backend='unsloth'), p.model.preset)\n"
        "except config.ParamsError as e:\n"
        "    print('refused', 'unsloth' in sys.modules)\n"
    )
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    assert out.stdout.split("\n")[:2] == ["hf False False", "refused False"]


def test_effective_batch_must_be_a_multiple_of_micro_batch_times_world(rendered, tmp_path, monkeypatch):
    assert training.gradient_accumulation(64, 8) == 8
    assert training.gradient_accumulation(64, 8, world=2) == 4
    with pytest.raises(config.ParamsError, match="not a multiple"):
        training.gradient_accumulation(64, 6)
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(config.ParamsError, match=r"batch_size 4 .*micro_batch_size 2 x world size 3"):
        run(tiny_params(), rendered, tmp_path)
    assert not (tmp_path / "model").exists()  # refused before building anything


def test_max_length_is_text_budget_plus_image_tokens():
    p = tiny_params(max_text_tokens=100)
    assert job(p).max_length == 100 + 4  # 64 px -> (64/16)^2/4 image tokens
    p["render"]["size"] = 672
    assert job(p).max_length == 100 + 441


def test_too_long_prompt_is_an_error_not_a_truncation(rendered, tmp_path):
    with pytest.raises(ValueError, match="tokens .* > max_length"):
        run(tiny_params(max_text_tokens=8), rendered, tmp_path)


def test_adapter_and_checkpoints_are_safetensors(straight):
    folder, summary = straight
    adapter = folder / "model" / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "adapter_config.json").is_file()
    assert not list(adapter.glob("*.bin"))
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert Path(config["base_model_name_or_path"]) == folder / "model" / "base" == Path(summary["base"])
    checkpoints = sorted((folder / "checkpoints").glob("checkpoint-*"))
    assert checkpoints and all((c / "adapter_model.safetensors").is_file() for c in checkpoints)
    assert summary["backend"] == "hf" and summary["resumed_from_step"] == 0
    assert summary["global_step"] == summary["max_steps"] > 3
    assert summary["batch"] == {"effective": 4, "micro": 2, "accumulation": 2, "world": 1}


def test_adapter_loads_onto_base_and_scores(straight, rendered):
    from peft import PeftModel

    from maskgate.model.qwen import load
    from maskgate.model.scoring import score

    folder, summary = straight
    p = tiny_params()
    base, processor = load(summary["base"])
    model = PeftModel.from_pretrained(base, summary["adapter"])
    rows = training.load_split(rendered, "val").select(range(4))
    scores = score(model, processor, job(p).prompt, [to_example(r) for r in rows], job(p).max_length)
    assert scores.shape == (4,) and ((0 <= scores) & (scores <= 1)).all()


def test_curves_by_optimizer_step_and_no_dvc_yaml(straight):
    folder, summary = straight
    metrics = folder / "live" / "plots" / "metrics"
    loss = (metrics / "train" / "loss.tsv").read_text().split()
    assert loss[:2] == ["step", "loss"]
    steps = [int(s) for s in loss[2::2]]
    assert steps == list(range(1, summary["global_step"] + 1))
    for name in ("train/learning_rate.tsv", "eval/loss.tsv", "eval/auroc.tsv"):
        assert (metrics / name).is_file(), name
    auroc_steps = [int(line.split("\t")[0]) for line in (metrics / "eval" / "auroc.tsv").read_text().splitlines()[1:]]
    assert auroc_steps[-1] == summary["global_step"] and auroc_steps[0] == 3
    assert not list(folder.rglob("dvc.yaml"))
    assert json.loads((folder / "live" / "metrics.json").read_text())["step"] == summary["global_step"]


def test_resume_after_interruption_ends_like_an_uninterrupted_run(straight, rendered, tmp_path):
    reference_folder, reference = straight
    with pytest.raises(Interrupt):
        run(tiny_params(), rendered, tmp_path, callbacks=[interrupt_at(3)])
    assert (tmp_path / "checkpoints" / "checkpoint-2").is_dir()
    assert not (tmp_path / "model" / "adapter").exists()

    resumed = run(tiny_params(), rendered, tmp_path)
    assert resumed["resumed_from_step"] == 2
    assert resumed["global_step"] == reference["global_step"] == resumed["max_steps"]
    # The Trainer restores optimizer, scheduler, RNG and data order: the same weights as without the interruption.
    import torch

    ours, theirs = adapter_weights(tmp_path), adapter_weights(reference_folder)
    assert ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-5, atol=1e-6)
    # The steps redone after the checkpoint are not logged twice.
    steps = [int(s) for s in (tmp_path / "live/plots/metrics/train/loss.tsv").read_text().split()[2::2]]
    assert steps == list(range(1, resumed["global_step"] + 1))


def test_checkpoints_of_other_settings_are_not_resumed(tmp_path):
    (tmp_path / "checkpoint-5").mkdir()
    (tmp_path / "checkpoint-5" / "trainer_state.json").write_text('{"global_step": 5}')
    (tmp_path / "fingerprint.json").write_text(json.dumps({"params": {"lr": 2}}))
    assert checkpoints.prepare_checkpoints(tmp_path, print_fn=lambda *_: None, params={"lr": 1}) is None  # other stamp
    assert not (tmp_path / "checkpoint-5").exists()
    (tmp_path / "checkpoint-5").mkdir()
    (tmp_path / "checkpoint-5" / "trainer_state.json").write_text('{"global_step": 5}')
    (tmp_path / "checkpoint-5" / "adapter_model.safetensors").write_bytes(b"")
    assert checkpoints.prepare_checkpoints(tmp_path, params={"lr": 1}).endswith("checkpoint-5")  # same stamp: resume


def test_batched_vision_trains_bitwise_like_the_library_path(straight, rendered, tmp_path):
    """train.batched_vision changes speed only: the same losses and the same adapter, to the bit."""
    import torch

    reference_folder, reference = straight
    assert tiny_params()["train"]["batched_vision"] is True  # the straight run took the batched path
    plain = run(tiny_params(batched_vision=False), rendered, tmp_path)
    assert plain["train_loss"] == reference["train_loss"]
    loss = "live/plots/metrics/train/loss.tsv"
    assert (tmp_path / loss).read_text() == (reference_folder / loss).read_text()
    ours, theirs = adapter_weights(tmp_path), adapter_weights(reference_folder)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_the_last_layer_at_the_answer_positions_trains_like_every_position(rendered, tmp_path):
    """train.last_layer_at_answer changes speed only: the same losses and adapter, to rounding (fewer rows summed).

    LoRA dropout off here: with it the last layer draws its masks for the kept rows only, the same distribution
    but other draws, so the two runs would differ by their dropout, not by the layer."""
    lora = {**tiny_train()["lora"], "dropout": 0.0}
    kept = run(tiny_params(lora=lora), rendered, tmp_path / "kept")
    every = run(tiny_params(lora=lora, last_layer_at_answer=False), rendered, tmp_path / "every")
    assert every["train_loss"] == pytest.approx(kept["train_loss"], rel=1e-5)
    assert_trained_alike(tmp_path / "kept", tmp_path / "every")


def test_the_patch_embedding_as_a_matrix_product_trains_like_the_convolution(straight, rendered, tmp_path,
                                                                             tiny_qwen3vl_dir):
    """train.patch_matmul changes speed only: the same losses and adapter, to rounding (the frozen vision tower's
    patch sums in another order). LoRA dropout stays on: the vision tower has no adapter, so no mask changes."""
    from maskgate.model import qwen as M
    from maskgate.model import vision
    from maskgate.model.base import speed_settings

    def embed(model):
        return next(m for m in model.modules() if type(m).__name__ == vision.PATCH_EMBED)

    for on in (True, False):  # what the setting does to the model train builds
        model, _ = M.load(tiny_qwen3vl_dir)
        speed_settings(model, job(tiny_params(patch_matmul=on)).train)
        assert getattr(embed(model), "_maskgate_patch_matmul", False) is on
    reference_folder, reference = straight
    assert tiny_params()["train"]["patch_matmul"] is True  # the straight run took the matrix product
    conv = run(tiny_params(patch_matmul=False), rendered, tmp_path)
    assert conv["train_loss"] == pytest.approx(reference["train_loss"], rel=1e-5)
    assert_trained_alike(reference_folder, tmp_path)


def test_ids_and_tables_made_ahead_train_bitwise_like_the_models_own(rendered, tmp_path, monkeypatch):
    """The collator's position ids and vision tables (scoring.Ahead) change speed only: same losses, same adapter."""
    import torch

    from maskgate.model import scoring

    made, own = [], scoring.Ahead.__call__
    monkeypatch.setattr(scoring.Ahead, "__call__", lambda self, batch: made.append(1) or own(self, batch))
    ahead = run(tiny_params(), rendered, tmp_path / "ahead")
    assert made, "the collator did not make the ids and tables"
    monkeypatch.setattr(scoring.Ahead, "__call__", lambda self, batch: batch)  # the model makes its own
    plain = run(tiny_params(), rendered, tmp_path / "plain")
    assert plain["train_loss"] == ahead["train_loss"]
    loss = "live/plots/metrics/train/loss.tsv"
    assert (tmp_path / "plain" / loss).read_text() == (tmp_path / "ahead" / loss).read_text()
    ours, theirs = adapter_weights(tmp_path / "ahead"), adapter_weights(tmp_path / "plain")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_micro_batch_auto_without_a_gpu(rendered, tmp_path, capsys):
    """auto on a CPU: autobatch.CPU_BATCH (or the largest divisor of the batch under it), said, and recorded."""
    summary = run(tiny_params(batch_size=6, micro_batch_size="auto"), rendered, tmp_path)
    assert summary["batch"] == {"effective": 6, "micro": 3, "accumulation": 2, "world": 1}
    assert "batch size auto on a CPU: 3" in capsys.readouterr().out


# Reads one split in a fresh process whose Hugging Face caches point into a temporary folder, and prints a
# digest of what training sees: every row in order (overlay included), the eval subset train() draws
# (shuffle + select), a column read and a batch read by index (what the Trainer's DataLoader asks).
READ_SPLIT = r"""
import hashlib, json, sys
from pathlib import Path
rendered, split, how = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
if how == "load_dataset":  # the reader train used before: datasets' parquet builder
    from datasets import load_dataset
    from maskgate.model.train import KEEP_COLUMNS
    files = sorted(str(p) for p in rendered.glob(f"{split}-*.parquet"))
    ds = load_dataset("parquet", data_files={split: files}, split=split).select_columns(KEEP_COLUMNS)
else:
    from maskgate import config
    from maskgate.model.train import check_prompt, load_split
    ds = load_split(rendered, split)
    check_prompt(ds, config.load(sys.argv[4]).prompt, split)
def digest(rows):
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps({k: (v.hex() if isinstance(v, bytes) else v) for k, v in r.items()}, sort_keys=True).encode())
    return h.hexdigest()
sub = ds.shuffle(seed=0).select(range(min(5, len(ds))))
batch = ds[[len(ds) - 1, 0, len(ds) // 2]]
print(json.dumps({"n": len(ds), "keys": list(ds[0]), "all": digest(ds), "eval_subset": digest(sub),
                  "labels": list(ds.select_columns(["label"])["label"]), "batch": digest([dict(zip(batch, v)) for v in zip(*batch.values())])}))
"""


def read_split(rendered: Path, split: str, how: str, cache: Path, params: Path) -> dict:
    env = dict(os.environ, HF_HOME=str(cache / "hf"), HF_DATASETS_CACHE=str(cache / "datasets"),
               PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    p = subprocess.run([sys.executable, "-c", READ_SPLIT, str(rendered), split, how, str(params)], env=env,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_load_split_reads_shards_in_place_with_the_rows_load_dataset_gave(rendered, tmp_path):
    """Train reads the shards where they lie: no Arrow copy in the datasets cache (or anywhere), and the same
    rows in the same order, the same shuffled eval subset and the same batch reads as datasets' parquet builder."""
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params()))
    before = {p: p.stat().st_mtime_ns for p in files_under(rendered)}
    for split in ("train", "val"):
        new = read_split(rendered, split, "in_place", tmp_path / f"cache-new-{split}", params)
        assert files_under(tmp_path / f"cache-new-{split}") == []  # nothing written in any HF cache
        old = read_split(rendered, split, "load_dataset", tmp_path / f"cache-old-{split}", params)
        # the check above sees a copy when there is one: the old reader leaves its Arrow files there
        assert any(p.suffix == ".arrow" for p in files_under(tmp_path / f"cache-old-{split}"))
        assert new == old and new["n"] > 0 and new["keys"] == training.KEEP_COLUMNS
    assert {p: p.stat().st_mtime_ns for p in files_under(rendered)} == before  # nothing written beside the shards


def test_row_groups_take_any_order_across_files(tmp_path):
    import pyarrow as pa

    from maskgate.utils import tables

    schema = pa.schema([("i", pa.int32()), ("s", pa.string())])
    paths = tables.write_shards(({"i": i, "s": f"r{i}"} for i in range(23)), tmp_path, "x", schema, 10)
    w = tables.ShardWriter(tmp_path, "y", schema, 10, row_group=3)  # several row groups per file
    for i in range(23):
        w.add({"i": i, "s": f"r{i}"})
    for files in (paths, w.close()):
        rows = tables.RowGroups(files)
        assert len(rows) == 23
        order = [22, 0, 9, 10, 3, 3, 17]
        assert rows.take(order, ["s"]).column("s").to_pylist() == [f"r{i}" for i in order]
        assert rows.read(["i"]).column("i").to_pylist() == list(range(23))
        with pytest.raises(IndexError):
            rows.take([23], ["i"])

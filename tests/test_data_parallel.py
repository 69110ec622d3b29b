"""Data-parallel training (train.gpus, torchrun): same steps and losses as one process, rank 0 writes, resume.

On this CPU-only machine the processes are CPU processes talking through gloo: the same Trainer/DDP code
path as on GPUs, minus NCCL. See maskgate/model/launch.py.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from maskgate import config
from maskgate.model import launch
from maskgate.model import train as training
from maskgate.model.backend import resolve_backend
from maskgate.model.checkpoints import fingerprint
from test_training import adapter_weights, job, render_tiny, tiny_params
from tests.conftest import settings

ROOT = Path(__file__).resolve().parents[1]

# Losses of the same examples through the same weights, summed in another order (gradients averaged
# across 2 processes instead of accumulated in one, 1 CPU thread per process instead of 2): fp32
# rounding, about 1e-7 relative measured. A step that saw other examples moves the loss by ~1e-2.
LOSS_RTOL = 1e-4

# A worker that trains under torchrun and SIGKILLs rank 0 right after optimizer step `kill_at`.
KILLED_WORKER = """
import os, signal, sys
from pathlib import Path
from maskgate import config
from maskgate.model import train as training
from maskgate.model.backend import resolve_backend
params_file, rendered, folder, kill_at = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
p = config.load(params_file)
backend = resolve_backend(p.train, p.model.preset)
from transformers import TrainerCallback
class Kill(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == kill_at and state.is_world_process_zero:
            os.kill(os.getpid(), signal.SIGKILL)
training.train(training.TrainJob.of(p), rendered, folder / "model", folder / "checkpoints", folder / "live",
               backend=backend, callbacks=[Kill()])
"""


def dp_params(gpus: int) -> dict:
    # No dropout: with it each rank draws its own masks and the curves differ by noise, not by a bug.
    p = tiny_params(batch_size=8, micro_batch_size=2, gpus=gpus, save_steps=2, eval_steps=100, eval_examples=0)
    p["train"]["lora"]["dropout"] = 0.0
    p["data"]["demo_images"] = 8
    return p


def env() -> dict:
    # the checkout under test, whatever the venv's editable install points at; no GPU even if there is one
    return dict(os.environ, PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="")


def stage(params_file: Path, rendered: Path, folder: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "stages/train.py", "--params", str(params_file), "--rendered", str(rendered),
           "--out", str(folder / "model"), "--checkpoints", str(folder / "checkpoints"),
           "--live", str(folder / "live"), "--report", str(folder / "train.json"),
           "--summary", str(folder / "train_summary.json")]
    return subprocess.run(cmd, capture_output=True, text=True, env=env(), cwd=ROOT, timeout=600)


def losses(folder: Path) -> dict[int, float]:
    rows = (folder / "live/plots/metrics/train/loss.tsv").read_text().split()[2:]
    steps = [int(s) for s in rows[::2]]
    assert len(steps) == len(set(steps)), f"steps logged twice: {steps}"
    return dict(zip(steps, map(float, rows[1::2])))


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    return render_tiny(dp_params(1), tmp_path_factory.mktemp("dp_data"))


def test_gpus_is_a_positive_integer_left_out_of_the_checkpoint_fingerprint(rendered):
    with pytest.raises(config.ParamsError, match="train.gpus"):
        settings(dp_params(0))
    # resuming on another GPU count is allowed: the count does not change what the checkpoints belong to
    assert fingerprint(job(dp_params(1)), rendered, "hf") == fingerprint(job(dp_params(2)), rendered, "hf")


def test_stage_refuses_a_batch_the_gpus_do_not_divide_before_launching(tmp_path):
    pf = tmp_path / "p.yaml"
    pf.write_text(yaml.safe_dump(dp_params(3)))  # 8 = 2 x accumulation x 3 has no solution
    out = stage(pf, tmp_path / "rendered", tmp_path)
    assert out.returncode == 1
    assert "train.batch_size 8 (effective batch) is not a multiple of train.micro_batch_size 2 x world size 3" in out.stderr
    assert "data-parallel processes" not in out.stdout and "Traceback" not in out.stderr


@pytest.mark.slow
def test_two_processes_match_one_and_resume_after_a_kill_on_either_count(rendered, tmp_path):
    """1 process straight vs 2 processes killed at step 5 and resumed (by the stage, train.gpus=2; and by 1 process)."""
    import torch

    # A last step short of a full batch would differ by design (2 processes pad it with repeated examples)
    n = len(training.load_split(rendered, "train"))
    assert n % 8 == 0, f"{n} train examples: pick demo_images so that they fill whole batches of 8"
    one = tmp_path / "one"
    ref = training.train(job(dp_params(1)), rendered, one / "model", one / "checkpoints", one / "live", backend="hf")
    assert ref["batch"] == {"effective": 8, "micro": 2, "accumulation": 4, "world": 1}

    p2 = tmp_path / "p2.yaml"
    p2.write_text(yaml.safe_dump(dp_params(2)))
    worker = tmp_path / "killed_worker.py"
    worker.write_text(KILLED_WORKER)
    two = tmp_path / "two"
    killed = subprocess.run(launch.torchrun_command(2, str(worker), [str(p2), str(rendered), str(two), "5"]),
                            capture_output=True, text=True, env=env(), cwd=ROOT, timeout=600)
    assert killed.returncode != 0 and "SIGKILL" in killed.stderr
    assert sorted(p.name for p in (two / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert not (two / "model" / "adapter").exists()
    # per-rank RNG states: what resuming on the same count restores
    assert {p.name for p in (two / "checkpoints/checkpoint-4").glob("rng_state*")} == {"rng_state_0.pth", "rng_state_1.pth"}
    switched = tmp_path / "switched"
    shutil.copytree(two, switched)

    out = stage(p2, rendered, two)  # through the stage: train.gpus=2 relaunches it under torchrun
    assert out.returncode == 0, out.stderr[-3000:]
    assert "2 data-parallel processes" in out.stdout
    assert out.stdout.count(f"train: {ref['global_step']} steps on hf") == 1  # printed by rank 0 only, after its writes
    summary = json.loads((two / "train_summary.json").read_text())
    assert summary["batch"] == {"effective": 8, "micro": 2, "accumulation": 2, "world": 2}
    assert summary["resumed_from_step"] == 4
    assert summary["global_step"] == summary["max_steps"] == ref["global_step"]
    assert json.loads((two / "model" / "verifier.json").read_text())["preset"] == "tiny"

    # the same optimizer steps over the same examples: the same curve and the same adapter
    ours, theirs = losses(two), losses(one)
    assert list(ours) == list(theirs) == list(range(1, ref["global_step"] + 1))
    for step in theirs:
        assert ours[step] == pytest.approx(theirs[step], rel=LOSS_RTOL), step
    a, b = adapter_weights(two), adapter_weights(one)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)

    # the 2-process checkpoint resumed by 1 process: same end (rng_state.pth is missing, unused without dropout)
    resumed = training.train(job(dp_params(1)), rendered, switched / "model", switched / "checkpoints", switched / "live",
                             backend="hf")
    assert resumed["resumed_from_step"] == 4 and resumed["global_step"] == ref["global_step"]
    a = adapter_weights(switched)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)


def test_data_parallel_runs_on_hf_and_refuses_unsloth_before_launching(tmp_path, monkeypatch):
    """Unsloth under torchrun failed on Qwen3-VL on two H100s (docs/benchmarks.md): auto picks hf, unsloth is refused."""
    params = dp_params(2)
    params["train"]["backend"] = "auto"
    assert resolve_backend(settings(params).train, "tiny") == "hf"
    monkeypatch.setenv("WORLD_SIZE", "2")  # started by a launcher, train.gpus left at 1
    assert resolve_backend(settings(dp_params(1)).train, "tiny") == "hf"
    params["train"]["backend"] = "unsloth"
    with pytest.raises(config.ParamsError, match="does not run data-parallel"):
        resolve_backend(settings(params).train, "tiny")
    monkeypatch.delenv("WORLD_SIZE")
    pf = tmp_path / "p.yaml"
    pf.write_text(yaml.safe_dump(params))
    out = stage(pf, tmp_path / "rendered", tmp_path)
    assert out.returncode == 1 and "use train.backend: hf" in out.stderr and "Traceback" not in out.stderr

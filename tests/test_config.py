"""maskgate.config: params.yaml as typed settings (every key required, none unknown) and the demo's settings file."""
import dataclasses
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from maskgate import config
from tests.conftest import ROOT, project_params

DEMO = ROOT / "configs" / "demo.yaml"


def test_params_yaml_is_every_setting_and_nothing_else():
    p = config.load(ROOT / "params.yaml")
    assert isinstance(p.train.lora, config.Lora) and isinstance(p.evaluate, config.Evaluate)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.train.batch_size = 3  # built once per stage, never changed on the way


@pytest.mark.parametrize("change, says", [
    (lambda p: p["evaluate"].update(target_precison=0.9), "evaluate.target_precison: unknown key"),
    (lambda p: p.pop("evaluate"), "evaluate: missing"),
    (lambda p: p["train"]["lora"].pop("alpha"), "train.lora.alpha: missing"),
    (lambda p: p["train"].update(gpus=0), "train.gpus must be a positive integer, got 0"),
    (lambda p: p["train"].update(gradient_checkpointing="yes"), "train.gradient_checkpointing: input should be a valid "
                                                                "boolean, got 'yes' or input should be 'auto', got 'yes'"),
    (lambda p: p["data"].update(source="s3"), "data.source: input should be 'hub', 'local' or 'demo', got 's3'"),
    (lambda p: p.update(lr="1e-4"), "lr: input should be a valid number, got '1e-4'"),
    (lambda p: p["render"].update(fill_color=[255, 0]), "render.fill_color.2: missing"),
    (lambda p: p["prompt"].update(user="no placeholder"), "prompt.user must contain the {query} placeholder"),
])
def test_a_bad_key_is_one_line_naming_it(change, says):
    p = project_params()
    change(p)
    with pytest.raises(config.ParamsError) as e:
        config.from_dict(p, "params.yaml")
    assert str(e.value) == f"params.yaml: {says}"


def test_yaml_is_read_as_dvc_writes_it(tmp_path):
    """`dvc exp run -S lr=1e-4` writes `lr: 1e-4`: a number in YAML 1.2 (DVC's), a string to PyYAML."""
    text = re.sub(r"(?m)^lr: .*$", "lr: 1e-4", (ROOT / "params.yaml").read_text())
    assert "\nlr: 1e-4\n" in text
    (tmp_path / "params.yaml").write_text(text)
    assert config.load(tmp_path / "params.yaml").lr == 1e-4


def test_the_demo_settings_apply_through_dvcs_own_override_parser(tmp_path):
    """configs/demo.yaml -> `-S` flags (scripts/demo.sh) -> DVC's parser: params.yaml with exactly those changes."""
    from dvc.utils.hydra import apply_overrides

    out = subprocess.run([sys.executable, "-m", "maskgate.config", "flags", str(DEMO), "--params",
                          str(ROOT / "params.yaml")], capture_output=True, text=True, cwd=ROOT, check=True)
    flags = out.stdout.splitlines()
    assert flags[0::2] == ["-S"] * (len(flags) // 2)
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    apply_overrides(str(tmp_path / "params.yaml"), flags[1::2])
    applied = yaml.safe_load((tmp_path / "params.yaml").read_text())
    want = config.overlay(project_params(), yaml.safe_load(DEMO.read_text()))
    assert applied == want
    demo = config.from_dict(applied)
    assert (demo.data.source, demo.model.preset, demo.render.size) == ("demo", "tiny", 96)


def test_an_overlay_may_only_change_keys_params_has(tmp_path):
    (tmp_path / "typo.yaml").write_text("train:\n  epoch: 3\n")
    out = subprocess.run([sys.executable, "-m", "maskgate.config", "flags", str(tmp_path / "typo.yaml"), "--params",
                          str(ROOT / "params.yaml")], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.strip() == "overlay: train.epoch is not a key of the params it changes"


def test_check_command_says_what_is_wrong(tmp_path):
    p = project_params()
    p["evaluate"]["target_precison"] = 0.9
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    out = subprocess.run([sys.executable, "-m", "maskgate.config", "check", str(tmp_path / "params.yaml")],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 1 and "evaluate.target_precison: unknown key" in out.stderr

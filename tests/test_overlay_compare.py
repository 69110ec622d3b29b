"""bench/overlay_compare.py's variants: each one's `-S` overrides give valid params with the values it names."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from maskgate import config

ROOT = Path(__file__).resolve().parents[1]


def load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


compare = load("overlay_compare")
demo_learning = load("demo_learning")


@pytest.mark.parametrize("name", list(compare.VARIANTS))
def test_each_variant_is_valid_params_with_its_values(name):
    overrides, _small = compare.VARIANTS[name]
    base = demo_learning.DEMO + demo_learning.recipe_overrides(str(demo_learning.RECIPE))
    p = config.from_dict(demo_learning.apply_overrides(ROOT / "params.yaml", base + overrides), name)
    for o in overrides:
        key, value = o.split("=", 1)
        section, field = key.split(".")
        got = getattr(getattr(p, section), field)
        assert str(got).lower() == value.lower(), (name, key, got)


def test_the_qualities_differ_only_in_jpeg_quality():
    assert [compare.QUALITIES[n][0][1] for n in compare.QUALITIES] == [
        "render.jpeg_quality=95", "render.jpeg_quality=90", "render.jpeg_quality=85"]
    assert {tuple(o[0][:1]) for o in compare.QUALITIES.values()} == {("render.style=fill",)}
    assert set(compare.VARIANTS) == set(compare.VIEWS) | set(compare.QUALITIES)


def test_table_of_logs_reads_both_name_keys(tmp_path, capsys):
    r = {"val_auroc": 0.99631, "val_auroc_by_query_type": {"colour": {"auroc": 0.9955, "n": 625}},
         "val_auroc_by_negative_kind": {"hard": 0.9999}, "wall_s": {"train": 161.9}}
    log = tmp_path / "a.log"
    log.write_text("$ python bench/demo_learning.py ...\n" + json.dumps({"view": "fill", "seed": 1, **r}) + "\n"
                   + json.dumps({"variant": "fill, jpeg 90", "seed": 0, **r}) + "\n\n| variant | seed |\n")
    rows = compare.logged([log])
    assert [(n, s) for n, s, _ in rows] == [("fill", 1), ("fill, jpeg 90", 0)]
    compare.table(rows)
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "| fill, jpeg 90 | 0 | 0.996 | 0.996 (625) | - | 1.000 | - | - | - | 162 |"

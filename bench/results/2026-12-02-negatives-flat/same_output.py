"""The sha256 of negatives.build's output files and report for a few params combos on prepared folders;
run once with the tree before streaming on PYTHONPATH and once with this one, and compare the lines.

    PYTHONPATH=TREE python bench/results/2026-12-02-negatives-flat/same_output.py PREPARED... > TREE.txt
"""
import dataclasses
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import maskgate
from maskgate import config
from maskgate.data import negatives

COMBOS = {
    "params.yaml": {},
    "pool_hard off": {"pool_hard": False},
    "instances on": {"missing_instance": 1, "extra_instance": 2},
    "everything on": {"per_positive": 6, "hard_fraction": 1.0, "max_iou": 0.8, "missing_instance": 2,
                      "extra_instance": 1},
}
print(f"maskgate from {Path(maskgate.__file__).parents[1]}", file=sys.stderr)
p = config.load(Path(__file__).resolve().parents[3] / "params.yaml")
for prepared in map(Path, sys.argv[1:]):
    for name, changes in COMBOS.items():
        with tempfile.TemporaryDirectory() as d:
            report = negatives.build(prepared, Path(d) / "out", dataclasses.replace(p.negatives, **changes), p.seed)
            files = {f.name: hashlib.sha256(f.read_bytes()).hexdigest()[:16] for f in sorted((Path(d) / "out").iterdir())}
        print(f"{prepared.name} / {name}: {json.dumps(report['examples'])} "
              f"report {hashlib.sha256(json.dumps(report, sort_keys=True).encode()).hexdigest()[:16]} {files}")

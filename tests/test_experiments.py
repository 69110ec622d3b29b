"""All six stages through `dvc exp run` on a small demo: two experiments, compared by `dvc exp show`."""
import json

import pytest

from tests.test_pipeline_dvc import sh

pytestmark = pytest.mark.slow

SMALL_DEMO = ["-S", "data.source=demo", "-S", "data.demo_images=24", "-S", "render.size=64",
              "-S", "model.preset=tiny", "-S", "train.batch_size=16", "-S", "train.micro_batch_size=8",
              "-S", "train.eval_examples=16", "-S", "train.save_steps=2", "-S", "train.eval_steps=2",
              "-S", "audit_sample.n=10"]


def test_two_experiments_side_by_side(two_demo_experiments):
    repo, status_after_first = two_demo_experiments  # `first` (lr 1e-3), then `second` (lr 1e-4)
    assert "up to date" in status_after_first  # a repro after an experiment is a no-op
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert set(metrics) == {"auroc", "average_precision", "accuracy", "ece", "threshold", "recall_at_target_precision",
                            "auto_pass_rate_at_target_precision", "hard_auroc", "shortcut_auroc", "test_auroc"}
    breakdown = json.loads((repo / "reports/metrics_breakdown.json").read_text())
    assert {"by_kind", "at_threshold"} <= set(breakdown) and breakdown["auroc"] == metrics["auroc"]
    assert (repo / "reports/audit/index.html").is_file() and (repo / "reports/plots/roc.png").is_file()
    shown = json.loads(sh("dvc", "exp", "show", "--json", cwd=repo))
    rows = {e["name"]: e for commit in shown for e in (commit.get("experiments") or [])
            for e in [e["revs"][0]] if e.get("name")}
    assert {"first", "second"} <= set(rows)
    lrs = {name: row["data"]["params"]["params.yaml"]["data"]["lr"] for name, row in rows.items()}
    assert lrs["first"] == 1e-3 and lrs["second"] == 1e-4
    for name in ("first", "second"):
        shown_metrics = rows[name]["data"]["metrics"]
        # what `dvc exp show` puts beside lr: the headline of evaluate and of train, nothing else
        assert set(shown_metrics) == {"reports/metrics.json", "reports/train.json"}
        assert "auroc" in shown_metrics["reports/metrics.json"]["data"]
        assert {"train_loss", "eval_auroc", "examples_per_s"} <= set(shown_metrics["reports/train.json"]["data"])
        assert sum(len(m["data"]) for m in shown_metrics.values()) <= 20

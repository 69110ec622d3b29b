"""Training curves: every Trainer log written to DVCLive at step = the optimizer step."""
from __future__ import annotations

import math


def metric_name(key: str) -> str:
    """Trainer log keys -> DVCLive names: eval_loss -> eval/loss, loss -> train/loss, train_runtime -> train/runtime."""
    if key.startswith("eval_"):
        return "eval/" + key[len("eval_"):]
    if key.startswith("train_"):
        return "train/" + key[len("train_"):]
    return "train/" + key


# Logged once at the end of training: summary values, not curves.
SUMMARY_ONLY = {"train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos", "train_loss"}


def live_callback(live):
    """A TrainerCallback writing every Trainer log to `live` at step = the optimizer step (not a log counter)."""
    from transformers import TrainerCallback

    class LiveCallback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            live.step = state.global_step
            for key, value in logs.items():
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    continue
                live.log_metric(metric_name(key), float(value), plot=key not in SUMMARY_ONLY)
            live.make_summary()

    return LiveCallback()

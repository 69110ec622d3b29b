"""The training loss from the logits of the answer positions only.

Why: the loss is on the answer token(s) (batching.py), one or two of ~617 positions per example at 672 px.
A causal LM's forward makes the logits of every position: for Qwen3-VL-8B a [micro-batch, positions,
151,936] product, about 7% of a training step's FLOPs once its backward is counted, and the cross-entropy
then copies it to fp32 (on an H100 at micro-batch 8: 1.046x the speed and 3.9 GiB less without them,
docs/benchmarks.md). Which library skipped that depended on the path:
TRL's SFTTrainer projects only labelled positions in its own compute_loss, Unsloth's trainer only while
UNSLOTH_RETURN_LOGITS is unset. Here it does not depend on the library:

* `positions` lists, on the CPU in the collator (so the GPU never waits for the list), the positions whose
  next token is a label in any row of the batch;
* the model keeps only their logits (transformers' `logits_to_keep` takes such a list);
* `loss` is transformers' own causal-LM loss over the same labels, given pre-shifted: fp32 logits, the sum
  over labelled tokens divided by `num_items_in_batch` (the accumulated batch's count), or their mean without
  it. So it is the loss the model computes from all its logits, to rounding (tests/test_answer_loss.py).
"""
from __future__ import annotations

import torch

from maskgate.model.batching import IGNORE_INDEX

KEY = "logits_to_keep"  # the model's own argument name: the collator's list reaches it as a batch key


def positions(labels: torch.Tensor) -> torch.Tensor:
    """[batch, length] labels -> the positions p (ascending) whose label at p + 1 is supervised in some row."""
    return (labels[:, 1:] != IGNORE_INDEX).any(0).nonzero().squeeze(1)


def with_positions(batch):
    """A training batch with KEY added: what `loss` reads, made where the batch is made (the collator, autobatch)."""
    batch[KEY] = positions(batch["labels"])
    return batch


def loss(model, inputs: dict, num_items_in_batch=None):
    """(loss, outputs) of one training batch that carries `labels` and KEY; outputs.logits only at KEY."""
    from transformers.loss.loss_utils import ForCausalLMLoss

    inputs = dict(inputs)
    labels = inputs.pop("labels")
    outputs = model(**inputs, use_cache=False)
    targets = labels[:, inputs[KEY] + 1]  # logits at p predict the token at p + 1
    value = ForCausalLMLoss(outputs.logits, None, outputs.logits.shape[-1], num_items_in_batch=num_items_in_batch,
                            ignore_index=IGNORE_INDEX, shift_labels=targets)
    return value, outputs

#!/usr/bin/env bash
# Set up .venv if needed, then run all six stages on the built-in demo data (CPU, no network),
# as a DVC experiment: params are set with -S, so params.yaml describes the real run until the
# experiment is applied to the workspace (it is, at the end of `dvc exp run`).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
git rev-parse --verify -q HEAD >/dev/null || { echo "demo: run it in a git checkout with at least one commit (DVC experiments need one)" >&2; exit 1; }
[ -d .dvc ] || dvc init -q
# dvc exp run records experiments as git commits: give them an author if git has none.
git config user.email >/dev/null || export GIT_AUTHOR_NAME="maskgate demo" GIT_AUTHOR_EMAIL="demo@maskgate.invalid" \
  GIT_COMMITTER_NAME="maskgate demo" GIT_COMMITTER_EMAIL="demo@maskgate.invalid"
# The demo recipe (bench/demo_learning.py measures it): 800 coloured-shape scenes at 96 px, the tiny
# random Qwen3-VL drawn with a wider initialisation (0.125: the default 0.02 barely learns from
# scratch in minutes), and *full fine-tuning in adapter form*: every linear layer (the names in
# modules_to_save match q_proj ... down_proj, the vision tower's and lm_head) is trained in full and
# saved with the adapter, because LoRA on a random tiny model learns far slower (peft needs one LoRA
# target: pos_embed). lr 1e-3 with a cosine schedule and no gradient clipping, 4 epochs of batch 16. The real run keeps LoRA.
DEMO_PARAMS=(
  -S data.source=demo -S data.demo_images=800
  -S render.size=96 -S render.outline_width=1
  -S model.preset=tiny -S model.tiny.initializer_range=0.125
  -S lr=1e-3 -S train.epochs=4 -S train.batch_size=16 -S train.micro_batch_size=16 -S train.lr_scheduler=cosine -S train.max_grad_norm=0
  -S train.lora.r=64 -S train.lora.alpha=64 -S train.lora.dropout=0
  -S 'train.lora.targets=[pos_embed]' -S 'train.lora.modules_to_save=[proj,qkv,linear_fc1,linear_fc2,lm_head]'
  -S train.eval_steps=200 -S train.save_steps=200 -S train.logging_steps=20
)
start=$(date +%s)
dvc exp run "${DEMO_PARAMS[@]}" "$@"
echo
echo "demo: done in $(( $(date +%s) - start )) s. Metrics:"
dvc metrics show
echo "demo: reports/metrics.json, reports/plots/*.png, reports/audit/index.html; 'dvc exp show' lists the experiment."
echo "demo: params.yaml now holds the demo settings; 'git checkout params.yaml dvc.lock' returns to the real run."

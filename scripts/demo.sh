#!/usr/bin/env bash
# Set up .venv if needed, then run the pipeline on the built-in demo data (CPU, no network),
# as a DVC experiment: params are set with -S, so params.yaml keeps describing the real run
# until the experiment is applied to the workspace (it is, at the end of `dvc exp run`).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
git rev-parse --verify -q HEAD >/dev/null || { echo "demo: run it in a git checkout with at least one commit (DVC experiments need one)" >&2; exit 1; }
[ -d .dvc ] || dvc init -q
# dvc exp run records experiments as git commits: give them an author if git has none.
git config user.email >/dev/null || export GIT_AUTHOR_NAME="maskgate demo" GIT_AUTHOR_EMAIL="demo@maskgate.invalid" \
  GIT_COMMITTER_NAME="maskgate demo" GIT_COMMITTER_EMAIL="demo@maskgate.invalid"
DEMO_PARAMS=(
  -S data.source=demo
  -S data.demo_images=400
  -S render.size=64
)
dvc exp run "${DEMO_PARAMS[@]}" "$@" render
echo
echo "demo: done. Reports: reports/prepare.json reports/negatives.json reports/render.json"
echo "demo: params.yaml now holds the demo settings; 'git checkout params.yaml dvc.lock' returns to the real run."

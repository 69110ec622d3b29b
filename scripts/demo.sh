#!/usr/bin/env bash
# Set up .venv if needed, then run all six stages on the built-in demo data (CPU, no network),
# as one DVC experiment with configs/demo.yaml's settings. `dvc exp run` applies them to the
# workspace's params.yaml at the end, as it does any experiment's.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
git rev-parse --verify -q HEAD >/dev/null || { echo "demo: run it in a git checkout with at least one commit (DVC experiments need one)" >&2; exit 1; }
[ -d .dvc ] || dvc init -q
# dvc exp run records experiments as git commits: give them an author if git has none.
git config user.email >/dev/null || export GIT_AUTHOR_NAME="maskgate demo" GIT_AUTHOR_EMAIL="demo@maskgate.invalid" \
  GIT_COMMITTER_NAME="maskgate demo" GIT_COMMITTER_EMAIL="demo@maskgate.invalid"
# The demo's settings: configs/demo.yaml (why each one is what it is), checked against params.yaml.
mapfile -t DEMO_PARAMS < <(python -m maskgate.config flags configs/demo.yaml)
[ "${#DEMO_PARAMS[@]}" -gt 0 ] || { echo "demo: configs/demo.yaml gave no settings" >&2; exit 1; }
start=$(date +%s)
dvc exp run "${DEMO_PARAMS[@]}" "$@"
echo
echo "demo: done in $(( $(date +%s) - start )) s. Metrics:"
dvc metrics show
echo "demo: reports/metrics.json, reports/plots/*.png, reports/audit/index.html; 'dvc exp show' lists the experiment."
echo "demo: params.yaml now holds the demo settings; 'git checkout params.yaml dvc.lock' returns to the real run."

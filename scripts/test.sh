#!/usr/bin/env bash
# Set up .venv if needed, then run the whole test suite (pass pytest options through, e.g. -m "not slow").
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
python -m pytest -q "$@"

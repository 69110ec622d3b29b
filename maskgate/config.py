"""Read params.yaml (the one place every stage takes its settings from)."""
from __future__ import annotations

from pathlib import Path

import yaml


def load_params(path: str | Path = "params.yaml") -> dict:
    """The params file as a dict.

    Stage scripts call this first thing, so a missing or broken file ends the stage here with one
    line naming the file and the fault (exit status 1), not with a traceback from inside yaml.
    """
    try:
        with open(path) as f:
            params = yaml.safe_load(f)
    except OSError as e:
        raise SystemExit(f"params: cannot read {path}: {e.strerror or e}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise SystemExit(f"params: {path} is not valid YAML: {e}") from None
    if not isinstance(params, dict):
        raise SystemExit(f"params: {path} must hold a mapping of sections, got {type(params).__name__}")
    return params

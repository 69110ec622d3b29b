"""Pick the most confident validation cases for a person to check by eye."""
from __future__ import annotations

from pathlib import Path

from maskgate import audit, tables


def audit_records(scores_path: Path, rendered: Path, n: int) -> list[dict]:
    """The n cases audit.select_audit picks, joined with their overlay and query."""
    scores = tables.read_table(scores_path)
    chosen = audit.select_audit([dict(s, query="", image=b"") for s in scores], n)
    wanted = {c["example_id"]: c for c in chosen}
    for r in tables.iter_shards(rendered, "val", ["example_id", "query", "overlay"]):
        if r["example_id"] in wanted:
            wanted[r["example_id"]].update(query=r["query"], image=r["overlay"])
    return chosen

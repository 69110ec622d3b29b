"""Pick the most confident validation cases for a person to check by eye."""
from __future__ import annotations

from pathlib import Path

from maskgate.evaluation import audit
from maskgate.utils import tables
def audit_records(scores_path: Path, rendered: Path, n: int) -> list[dict]:
    """The n cases audit.select_audit picks, joined with their overlay and query."""
    scores = tables.read_table(scores_path)
    chosen = audit.select_audit([dict(s, query="", image=b"") for s in scores], n)
    wanted = {c["example_id"]: c for c in chosen}
    for r in tables.iter_shards(rendered, "val", ["example_id", "query", "overlay"]):
        if r["example_id"] in wanted:
            wanted[r["example_id"]].update(query=r["query"], image=r["overlay"])
    missing = [c["example_id"] for c in chosen if not c["image"]]
    if missing:  # scores and shards from different runs: an audit row without its picture is useless
        raise ValueError(f"{len(missing)} scored examples are not in the val shards of {rendered} "
                         f"(e.g. {missing[0]!r}): re-run evaluate on these shards")
    return chosen

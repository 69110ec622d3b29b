"""The hand-audit sample: the verifier's most confident validation answers, for a person to check.

Confident mistakes are what hurt a quality gate (a confident wrong ACCEPT slips past the human), and
confident "mistakes" are also where label noise and rendering bugs show up first. So the sample takes
the most confident answers on both sides and puts the wrong ones at the top.

A record is a dict with keys ``example_id``, ``query``, ``kind``, ``label`` (1 = the group is
correct; prompt.py maps labels to answers), ``p_accept`` (P(ACCEPT)) and ``image`` (JPEG bytes of
the overlay the verifier saw). The model's decision is ACCEPT iff ``p_accept >= threshold`` (0.5 by
default, the verifier's own answer); a case is wrong when that decision disagrees with
``gate_label(label)`` (with a BORDERLINE answer, a borderline case is right when not accepted).
The answer words on the page and in the CSV come from the prompt (params.yaml ``prompt.answers``).

Use: ``write_audit(select_audit(records, n), out_dir, prompt=params.prompt)`` (params: config.Params).
"""
from __future__ import annotations

import base64
import csv
import html
import math
from collections.abc import Sequence
from pathlib import Path

from maskgate.prompt import Prompt, gate_label
from maskgate.utils import tables

REQUIRED_KEYS = ("example_id", "query", "kind", "label", "p_accept", "image")
CSV_COLUMNS = ("example_id", "query", "kind", "label", "p_accept", "decision", "correct", "failure_type")
def _check(records: Sequence[dict]) -> None:
    seen = set()
    for r in records:
        missing = [k for k in REQUIRED_KEYS if k not in r]
        if missing:
            raise ValueError(f"audit record {r.get('example_id')!r} lacks {missing}")
        if int(r["label"]) < 0 or not 0.0 <= float(r["p_accept"]) <= 1.0:
            raise ValueError(f"audit record {r['example_id']!r}: label must be >= 0 and p_accept in [0, 1]")
        key = str(r["example_id"])
        if key in seen:  # ties are broken by example_id, so it must identify a record
            raise ValueError(f"duplicate example_id {key!r}")
        seen.add(key)


def decision(record: dict, threshold: float = 0.5) -> int:
    """1 (ACCEPT) if the verifier's P(ACCEPT) reaches the threshold, else 0 (REJECT)."""
    return int(float(record["p_accept"]) >= threshold)


def is_correct(record: dict, threshold: float = 0.5) -> bool:
    return decision(record, threshold) == gate_label(record["label"])


def select_audit(records: Sequence[dict], n: int, threshold: float = 0.5) -> list[dict]:
    """The ``n`` most confident cases: ``ceil(n/2)`` confident ACCEPT, then ``floor(n/2)`` confident REJECT.

    Confident ACCEPT = highest P(ACCEPT); confident REJECT = lowest P(ACCEPT), taken from the
    records not already in the ACCEPT half (an odd n gives the extra case to ACCEPT, the side whose
    mistakes pass the gate unseen). With fewer than n records, every record is returned.

    Within each half: wrong cases first, then by confidence (ACCEPT half by P descending, REJECT
    half by P ascending), ties broken by ``str(example_id)``. "Wrong" is judged by the decision at
    ``threshold``; normally the ACCEPT half lies above it and the REJECT half below, so a wrong case
    there is a label-0 group confidently accepted or a label-1 group confidently rejected.

    Returns the record dicts themselves (not copies), in audit order.
    """
    _check(records)
    if n <= 0:
        return []
    n_accept, n_reject = math.ceil(n / 2), n // 2
    by_p_desc = sorted(records, key=lambda r: (-float(r["p_accept"]), str(r["example_id"])))
    accept_half = by_p_desc[:n_accept]
    reject_half = sorted(by_p_desc[n_accept:], key=lambda r: (float(r["p_accept"]), str(r["example_id"])))[:n_reject]
    # False sorts before True, so wrong cases (correct == False) come first.
    accept_half.sort(key=lambda r: (is_correct(r, threshold), -float(r["p_accept"]), str(r["example_id"])))
    reject_half.sort(key=lambda r: (is_correct(r, threshold), float(r["p_accept"]), str(r["example_id"])))
    return accept_half + reject_half


def audit_records(scores_path: Path, rendered: Path, n: int) -> list[dict]:
    """The n cases select_audit picks, joined with their overlay and query."""
    scores = tables.read_table(scores_path)
    chosen = select_audit([dict(s, query="", image=b"") for s in scores], n)
    wanted = {c["example_id"]: c for c in chosen}
    for r in tables.iter_shards(rendered, "val", ["example_id", "query", "overlay"]):
        if r["example_id"] in wanted:
            wanted[r["example_id"]].update(query=r["query"], image=r["overlay"])
    missing = [c["example_id"] for c in chosen if not c["image"]]
    if missing:  # scores and shards from different runs: an audit row without its picture is useless
        raise ValueError(f"{len(missing)} scored examples are not in the val shards of {rendered} "
                         f"(e.g. {missing[0]!r}): re-run evaluate on these shards")
    return chosen


def _data_uri(image: bytes) -> str:
    """The image as a data URI, so index.html needs no other file and no network."""
    if image[:3] == b"\xff\xd8\xff":
        mime = "image/jpeg"
    elif image[:8] == b"\x89PNG\r\n\x1a\n":
        mime = "image/png"
    else:
        raise ValueError("audit image is neither JPEG nor PNG")
    return f"data:{mime};base64,{base64.b64encode(image).decode('ascii')}"


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; background: #fafafa; color: #222; }
.case { display: flex; gap: 1.2em; align-items: flex-start; background: #fff; margin: 0 0 1.2em;
        padding: 0.8em; border: 2px solid #ccc; border-radius: 6px; }
.case.wrong { border: 4px solid #c00; background: #fff3f3; }
.case img { max-width: 480px; width: 48vw; height: auto; border: 1px solid #999; }
.flag { display: inline-block; font-weight: bold; padding: 0.15em 0.6em; border-radius: 3px; }
.wrong .flag { background: #c00; color: #fff; }
.right .flag { background: #ddd; color: #333; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.3em 1em; margin: 0.6em 0 0; }
dt { font-weight: bold; }
dd { margin: 0; }
.query { font-size: 1.15em; }
"""


def _case_html(index: int, r: dict, threshold: float, prompt: Prompt) -> str:
    e = html.escape
    label, dec = int(r["label"]), decision(r, threshold)
    said, truth = prompt.decision_names[1 - dec], prompt.label_text(label)
    wrong = not is_correct(r, threshold)
    flag = (f"&#10007; WRONG: the verifier says {e(said)}, the label is {e(truth)}" if wrong
            else f"&#10003; right: {e(said)}")
    return (
        f'<section class="case {"wrong" if wrong else "right"}" id="case-{index}">\n'
        f'<img alt="overlay of example {e(str(r["example_id"]))}" src="{_data_uri(r["image"])}">\n'
        f"<div>\n"
        f'<span class="flag">{flag}</span>\n'
        f"<dl>\n"
        f"<dt>#</dt><dd>{index}</dd>\n"
        f'<dt>query</dt><dd class="query">{e(str(r["query"]))}</dd>\n'
        f"<dt>true label</dt><dd>{e(truth)} ({label})</dd>\n"
        f'<dt>P({e(prompt.accept)})</dt><dd>{float(r["p_accept"]):.3f}</dd>\n'
        f"<dt>kind</dt><dd>{e(str(r['kind']))}</dd>\n"
        f"<dt>example_id</dt><dd>{e(str(r['example_id']))}</dd>\n"
        f"</dl>\n</div>\n</section>\n"
    )


def write_audit(records: Sequence[dict], out_dir, threshold: float = 0.5, *, prompt: Prompt) -> dict[str, Path]:
    """Write ``index.html`` and ``audit.csv`` for the records, in the order given.

    ``index.html`` is one self-contained file (images as base64 data URIs, inline CSS, no scripts)
    that opens offline; wrong cases get a red frame and a "WRONG" flag in words, so the marker
    survives greyscale printing. All record text is HTML-escaped.

    ``audit.csv`` columns: ``example_id, query, kind, label, p_accept`` (6 decimals),
    ``decision`` (``prompt.decision_names``: ACCEPT/REJECT at ``threshold`` with the default
    answers), ``correct`` (1/0) and ``failure_type``, left empty for the person auditing to fill in.
    The page names each true label by its answer (``prompt.label_text``); a label that names no
    answer of the prompt is an error naming the record.

    The same records give byte-identical files (no dates, fixed line ends). Returns
    ``{"index.html": path, "audit.csv": path}``.
    """
    _check(records)
    for r in records:
        try:
            prompt.label_text(r["label"])
        except ValueError as err:
            raise ValueError(f"audit record {r['example_id']!r}: {err}") from None
    accept, rest = prompt.decision_names
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_wrong = sum(not is_correct(r, threshold) for r in records)
    page = (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        "<title>maskgate hand audit</title>\n"
        f"<style>{_STYLE}</style>\n</head>\n<body>\n"
        "<h1>maskgate hand audit</h1>\n"
        f"<p>{len(records)} most confident validation cases, {n_wrong} wrong (framed in red). "
        f"Decision: {html.escape(accept)} when P({html.escape(accept)}) &ge; {threshold:g}. "
        "Record a failure type per case in "
        "<code>audit.csv</code>.</p>\n"
        + "".join(_case_html(i, r, threshold, prompt) for i, r in enumerate(records, start=1))
        + "</body>\n</html>\n"
    )
    html_path = out / "index.html"
    html_path.write_text(page, encoding="utf-8", newline="\n")

    csv_path = out / "audit.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(CSV_COLUMNS)
        for r in records:
            dec = decision(r, threshold)
            w.writerow(
                [
                    str(r["example_id"]),
                    str(r["query"]),
                    str(r["kind"]),
                    int(r["label"]),
                    f"{float(r['p_accept']):.6f}",
                    accept if dec else rest,
                    int(is_correct(r, threshold)),
                    "",
                ]
            )
    return {"index.html": html_path, "audit.csv": csv_path}

"""The review queue: ``review.html`` beside the gate's outputs, the needs-review lines for a person.

Each case shows the overlay the verifier saw, the query, P(ACCEPT) and why it is there: a REJECT
(P(ACCEPT) below the threshold) or a bad line (its reason, detail and the line itself; a bad line
has no overlay). Cases are sorted by P(ACCEPT), highest first (the ones nearest the threshold,
most likely fine), bad lines last; the page can re-sort and filter.

Made to stay usable for thousands of lines and to work from file:// with no network:

* the overlays are files, ``review/<line>-<key>.jpg`` (key: the line's content hash, gate.line_key),
  not data URIs, so the page stays small and the browser fetches only the pictures of the page on
  screen;
* ``review.html`` is one file: the cases as JSON inside it and a small inline script that shows
  one page of them at a time (page, filter and order live in the URL's #fragment, so reload, back
  and a bookmark keep them). Where scripts are off, a notice points to ``needs_review.jsonl``.

The overlay is the very picture that was scored: the gate keeps the JPEG bytes of a line that
falls below the threshold when it scores it (`write_overlay`). A line scored by an earlier run that
needs review only now (a higher threshold on the rerun) is drawn again by the gate's own function,
which gives the same bytes. ``write`` removes the overlays of lines that no longer need review.
Every file is written to a temporary name first, then renamed.
"""
from __future__ import annotations

import html
import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from maskgate.utils import tables

PAGE, FOLDER = "review.html", "review"
LINE_SHOWN = 2000  # characters of a bad line's text on the page; the rest is in needs_review.jsonl
_OURS = re.compile(r"^\d+-[0-9a-f]{16}\.jpg$|^\..+\.tmp$")  # what `write` may delete in FOLDER


def overlay_path(out_dir: Path, line: int, key: str) -> Path:
    """Named by line number and content hash, so an overlay never stands for another line's content."""
    return Path(out_dir) / FOLDER / f"{line}-{key}.jpg"


def _write_atomic(path: Path, data: bytes) -> None:
    with tables.atomic_file(path) as tmp:
        tmp.write_bytes(data)


def write_overlay(out_dir: Path, line: int, key: str, picture: bytes) -> None:
    """Keep the JPEG a line was scored on (the gate calls this for lines below the threshold)."""
    path = overlay_path(out_dir, line, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, picture)


def clear(out_dir: Path) -> None:
    """Delete the kept overlays (gate --fresh: the next run may score with another model's style)."""
    folder = Path(out_dir) / FOLDER
    if folder.is_dir():
        for f in folder.iterdir():
            if _OURS.match(f.name):
                f.unlink()


def write(out_dir: Path, cases, summary: dict, names: tuple[str, str],
          redraw: Callable[[int, str], bytes]) -> Path:
    """Write review.html for `cases` and make review/ hold exactly their overlays; returns the page's path.

    A case is a needs-review record of results.jsonl (line, id, p_accept, or error + detail) plus
    ``key`` (gate.line_key), ``query`` (None when the line has none) and ``text`` (the manifest line).
    `redraw(line, text)`: the overlay of a scored line whose kept JPEG is missing; it may raise
    ValueError or OSError (the image or mask changed or vanished since), which the page then shows.
    `names`: the prompt's decision names (ACCEPT, REJECT). `summary`: the gate's summary.
    """
    shown, wanted = collect(out_dir, cases, redraw)
    return publish(out_dir, shown, wanted, summary, names)


def collect(out_dir: Path, cases: Iterable[dict], redraw: Callable[[int, str], bytes]) -> tuple[list[dict], set[str]]:
    """The page's entries for `cases` (see `write`; any iterable, taken one at a time), overlays
    drawn again where missing; and the overlay file names they use. An entry keeps only what the page
    shows (a bad line's text cut to LINE_SHOWN), so a long queue's lines are not held."""
    out_dir = Path(out_dir)
    folder = out_dir / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    shown, wanted = [], set()
    for c in cases:
        item = {"line": c["line"], "id": str(c["id"]), "query": None if c.get("query") is None else str(c["query"])}
        if "error" in c:
            text = c["text"]
            size = getattr(text, "size", None)  # a gate.Overlong holds its head only
            more = (size - len(text.encode("utf-8", "surrogateescape")) if size is not None
                    else len(text) - LINE_SHOWN if len(text) > LINE_SHOWN else 0)
            cut = text[:LINE_SHOWN] + (f" ... ({more} more {'bytes' if size is not None else 'characters'})"
                                       if more > 0 else "")
            item.update(error=c["error"], detail=c.get("detail", ""), text=cut)
        else:
            item["p"] = c["p_accept"]
            path = overlay_path(out_dir, c["line"], c["key"])
            if not path.is_file():
                try:
                    _write_atomic(path, redraw(c["line"], c["text"]))
                except (ValueError, OSError) as e:  # drawn when scored, gone now: say so, not fail the run
                    item["img_error"] = f"the overlay could not be drawn again: {e}"
            if path.is_file():
                item["img"] = f"{FOLDER}/{path.name}"
                wanted.add(path.name)
        shown.append(item)
    return shown, wanted


def publish(out_dir: Path, shown: list[dict], wanted: set[str], summary: dict, names: tuple[str, str]) -> Path:
    """Write review.html from collect's entries, then delete the overlays no entry uses."""
    out_dir = Path(out_dir)
    folder = out_dir / FOLDER
    # Nearest the threshold first; bad lines (no P) after every REJECT, in manifest order.
    shown.sort(key=lambda i: (0, -i["p"], i["line"]) if "p" in i else (1, 0.0, i["line"]))
    page = out_dir / PAGE
    _write_atomic(page, _page(shown, summary, names).encode("utf-8"))
    for f in folder.iterdir():  # after the page: it never points to a file already gone
        if f.name not in wanted and _OURS.match(f.name):
            f.unlink()
    return page


def _json_for_script(obj) -> str:
    """JSON safe inside <script>: no '<' (so no '</script>'), ASCII only (lone surrogates stay escapes)."""
    return json.dumps(obj, ensure_ascii=True, sort_keys=True).replace("<", "\\u003c")


def _page(cases: list[dict], summary: dict, names: tuple[str, str]) -> str:
    e = html.escape
    accept, reject = names
    n_bad = sum("error" in c for c in cases)
    n = len(cases)
    threshold = float(summary["threshold"])
    head = (f"{n} of {summary['lines']} lines need review: {n - n_bad} {e(reject)} "
            f"(P({e(accept)}) &lt; {threshold:.4f}) and {n_bad} bad lines. ")
    source = str(summary["threshold_source"])
    head += ("The threshold was given on the command line." if source == "given" else f"Threshold from {e(source)}.")
    data = {"accept": accept, "reject": reject, "threshold": threshold, "cases": cases}
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>maskgate review queue ({n})</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>maskgate review queue</h1>
<p id="summary" data-count="{n}">{head}</p>
<p class="hint">Sorted by P({e(accept)}), highest first; bad lines last. Every case is also a line of
<code>needs_review.jsonl</code>. Keys: &larr; / &rarr; turn the page.</p>
<noscript><p class="warn">This page needs JavaScript to show its cases;
they are all in <code>needs_review.jsonl</code> beside it.</p></noscript>
<nav class="pager" id="top-pager"></nav>
<main id="cases"></main>
<nav class="pager" id="bottom-pager"></nav>
<script type="application/json" id="review-data">{_json_for_script(data)}</script>
<script>{_SCRIPT}</script>
</body>
</html>
"""


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; background: #fafafa; color: #222; }
.hint { color: #555; }
.warn { background: #fee; border: 2px solid #c00; padding: 0.5em; }
.pager { display: flex; flex-wrap: wrap; gap: 0.5em; align-items: center; margin: 0.8em 0; }
.pager .status { font-weight: bold; margin: 0 0.5em; }
.case { display: flex; gap: 1.2em; align-items: flex-start; background: #fff; margin: 0 0 1em;
        padding: 0.8em; border: 2px solid #ccc; border-radius: 6px; }
.case.bad { border-color: #c60; background: #fff8f0; }
.case > a, .noimg { flex: none; }
.case > div:last-child { flex: 1; min-width: 0; }
.case img { width: 448px; max-width: 45vw; height: auto; border: 1px solid #999; display: block; }
.noimg { width: 448px; max-width: 45vw; min-height: 4em; border: 1px dashed #999; padding: 0.5em;
         box-sizing: border-box; color: #555; }
.bad .noimg { width: 10em; }
.why { display: inline-block; font-weight: bold; padding: 0.15em 0.6em; border-radius: 3px; background: #ddd; }
.bad .why { background: #c60; color: #fff; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.3em 1em; margin: 0.6em 0 0; }
dt { font-weight: bold; }
dd { margin: 0; overflow-wrap: anywhere; }
.query { font-size: 1.15em; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; max-height: 12em; overflow: auto; background: #f3f3f3;
      padding: 0.4em; margin: 0; }
"""

# The pager. Builds the cases of one page with textContent only (no HTML from the data), so a
# query or a manifest line can hold any text. State in the #fragment: page, per, show, order.
_SCRIPT = r"""
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("review-data").textContent);
  const PER = [50, 100, 200, 500];
  const SHOW = {all: "all cases", reject: "only " + data.reject, bad: "only bad lines"};
  const ORDER = {high: "P(" + data.accept + ") high to low", low: "P(" + data.accept + ") low to high"};

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function state() {
    const q = new URLSearchParams(location.hash.slice(1));
    const per = parseInt(q.get("per"), 10);
    return {
      page: Math.max(1, parseInt(q.get("page"), 10) || 1),
      per: per > 0 ? per : 100,
      show: q.get("show") in SHOW ? q.get("show") : "all",
      order: q.get("order") in ORDER ? q.get("order") : "high",
    };
  }

  function go(change) {
    const s = Object.assign(state(), change);
    location.hash = new URLSearchParams({page: s.page, per: s.per, show: s.show, order: s.order}).toString();
  }

  function selected(s) {
    // data.cases: scored cases by P(ACCEPT) high to low, then the bad lines.
    let scored = data.cases.filter(c => !("error" in c));
    const bad = data.cases.filter(c => "error" in c);
    if (s.order === "low") scored = scored.slice().reverse();
    return s.show === "reject" ? scored : s.show === "bad" ? bad : scored.concat(bad);
  }

  function row(dl, name, value, cls) {
    dl.append(el("dt", "", name));
    const dd = el("dd", cls || "");
    if (value instanceof Node) dd.append(value); else dd.textContent = value;
    dl.append(dd);
  }

  function card(c, rank, total) {
    const sec = el("section", "case " + ("error" in c ? "bad" : "reject"));
    sec.id = "line-" + c.line;
    if (c.img) {
      const link = el("a");
      link.href = c.img;
      const img = el("img");
      img.alt = "overlay of line " + c.line;
      img.addEventListener("error", () => {  // a missing or broken file says so instead of a blank
        link.replaceWith(el("div", "noimg", "overlay file missing or unreadable: " + c.img));
      });
      img.src = c.img;
      link.append(img);
      sec.append(link);
    } else {
      sec.append(el("div", "noimg", c.img_error || "no overlay: this line could not be read"));
    }
    const info = el("div");
    const why = "error" in c
      ? "bad line: " + c.error
      : data.reject + ": P(" + data.accept + ") " + c.p.toFixed(4) + " < threshold " + data.threshold.toFixed(4);
    info.append(el("span", "why", why));
    const dl = el("dl");
    row(dl, "#", rank + " of " + total);
    row(dl, "query", c.query === null ? "(none)" : c.query, "query");
    row(dl, "P(" + data.accept + ")", "p" in c ? c.p.toFixed(4) : "not scored");
    row(dl, "id", c.id);
    row(dl, "line", String(c.line));
    if ("error" in c) {
      if (c.detail) row(dl, "detail", c.detail);
      row(dl, "the line", el("pre", "", c.text));
    }
    info.append(dl);
    sec.append(info);
    return sec;
  }

  function button(text, page, enabled) {
    const b = el("button", "", text);
    b.disabled = !enabled;
    b.addEventListener("click", () => go({page: page}));
    return b;
  }

  function choice(options, value, key) {
    const sel = el("select");
    for (const [k, label] of Object.entries(options)) {
      const o = el("option", "", label);
      o.value = k;
      o.selected = String(k) === String(value);
      sel.append(o);
    }
    sel.addEventListener("change", () => go({[key]: sel.value, page: 1}));
    return sel;
  }

  function pager(nav, s, pages, first, last, total) {
    const pers = PER.includes(s.per) ? PER : PER.concat([s.per]).sort((a, b) => a - b);  // e.g. #per=5
    nav.replaceChildren(
      button("first", 1, s.page > 1), button("previous", s.page - 1, s.page > 1),
      el("span", "status", total ? "cases " + first + "\u2013" + last + " of " + total + ", page " + s.page + " of " + pages
                                 : "no cases"),
      button("next", s.page + 1, s.page < pages), button("last", pages, s.page < pages),
      choice(SHOW, s.show, "show"), choice(ORDER, s.order, "order"),
      choice(Object.fromEntries(pers.map(n => [n, n + " per page"])), s.per, "per"));
  }

  function render() {
    const s = state();
    const chosen = selected(s);
    const pages = Math.max(1, Math.ceil(chosen.length / s.per));
    s.page = Math.min(s.page, pages);
    const start = (s.page - 1) * s.per;
    const shown = chosen.slice(start, start + s.per);
    document.getElementById("cases").replaceChildren(...shown.map((c, i) => card(c, start + i + 1, chosen.length)));
    const last = start + shown.length;
    pager(document.getElementById("top-pager"), s, pages, start + 1, last, chosen.length);
    pager(document.getElementById("bottom-pager"), s, pages, start + 1, last, chosen.length);
    document.body.dataset.page = s.page;
    document.body.dataset.pages = pages;
    document.body.dataset.shown = chosen.length;
  }

  window.addEventListener("hashchange", () => { render(); window.scrollTo(0, 0); });
  document.addEventListener("keydown", ev => {
    if (ev.target.closest("select, input, textarea") || ev.altKey || ev.ctrlKey || ev.metaKey) return;
    const s = state();
    const pages = Number(document.body.dataset.pages);
    if (ev.key === "ArrowRight" && s.page < pages) go({page: s.page + 1});
    if (ev.key === "ArrowLeft" && s.page > 1) go({page: s.page - 1});
  });
  render();
})();
"""

"""maskgate.evaluation.audit: which cases are picked, in which order, and what the offline report holds."""
import base64
import csv
import hashlib
import io
import re

import pytest
from PIL import Image

from maskgate.evaluation.audit import CSV_COLUMNS, select_audit, write_audit
from maskgate.prompt import Prompt


def jpeg(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


IMG = jpeg((200, 0, 200))


def rec(example_id, p, label, kind=None, query="the red cup"):
    return {
        "example_id": example_id,
        "query": query,
        "kind": kind or ("positive" if label else "hard"),
        "label": label,
        "p_accept": p,
        "image": IMG,
    }


# id: (p_accept, label). Wrong at 0.5: e (0.90, 0), f (0.97, 0), g (0.05, 1)
RECORDS = [
    rec("a", 0.99, 1),
    rec("b", 0.95, 1),
    rec("c", 0.02, 0),
    rec("d", 0.10, 0),
    rec("e", 0.90, 0),
    rec("f", 0.97, 0),
    rec("g", 0.05, 1),
    rec("h", 0.50, 1),
    rec("i", 0.45, 0),
    rec("j", 0.60, 0),
]


def ids(records):
    return [r["example_id"] for r in records]


def test_selection_halves_and_wrong_first():
    # ACCEPT half: top 3 by P = a .99, f .97 (wrong), b .95; REJECT half: bottom 3 = c .02, g .05 (wrong), d .10
    picked = select_audit(RECORDS, 6)
    assert ids(picked) == ["f", "a", "b", "g", "c", "d"]
    assert all(p is r for p, r in zip(picked, [RECORDS[5], RECORDS[0], RECORDS[1]]))


def test_odd_n_gives_the_extra_case_to_accept():
    picked = select_audit(RECORDS, 5)
    assert ids(picked) == ["f", "a", "b", "g", "c"]
    assert ids(select_audit(RECORDS, 1)) == ["a"]
    assert select_audit(RECORDS, 0) == []


def test_more_asked_than_there_are():
    picked = select_audit(RECORDS, 50)
    assert sorted(ids(picked)) == sorted(ids(RECORDS)) and len(picked) == len(RECORDS)


def test_ties_break_by_example_id_regardless_of_input_order():
    recs = [rec(i, 0.8, 1) for i in ("z", "m", "b")] + [rec(i, 0.2, 0) for i in ("y", "c")]
    assert ids(select_audit(recs, 4)) == ["b", "m", "c", "y"]
    assert ids(select_audit(list(reversed(recs)), 4)) == ["b", "m", "c", "y"]


def test_duplicate_ids_and_missing_keys_fail():
    with pytest.raises(ValueError, match="duplicate"):
        select_audit([rec("a", 0.9, 1), rec("a", 0.1, 0)], 2)
    bad = rec("a", 0.9, 1)
    del bad["image"]
    with pytest.raises(ValueError, match="lacks"):
        select_audit([bad], 1)


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_csv_columns_and_values(tmp_path, verifier_prompt):
    written = write_audit(select_audit(RECORDS, 6), tmp_path, prompt=verifier_prompt)
    assert set(written) == {"index.html", "audit.csv"}
    with open(written["audit.csv"], newline="") as f:
        assert next(csv.reader(f)) == list(CSV_COLUMNS)
    rows = read_csv(written["audit.csv"])
    assert [r["example_id"] for r in rows] == ["f", "a", "b", "g", "c", "d"]
    assert rows[0] == {
        "example_id": "f",
        "query": "the red cup",
        "kind": "hard",
        "label": "0",
        "p_accept": "0.970000",
        "decision": "ACCEPT",
        "correct": "0",
        "failure_type": "",
    }
    assert [r["correct"] for r in rows] == ["0", "1", "1", "0", "1", "1"]
    assert [r["decision"] for r in rows] == ["ACCEPT"] * 3 + ["REJECT"] * 3


def test_html_is_self_contained_and_marks_wrong(tmp_path, verifier_prompt):
    written = write_audit(select_audit(RECORDS, 6), tmp_path, prompt=verifier_prompt)
    page = written["index.html"].read_text(encoding="utf-8")
    assert page.count('class="case wrong"') == 2 and page.count('class="case right"') == 4
    assert page.count("WRONG") == 2
    assert "0.970" in page and "REJECT (0)" in page and ">hard<" in page
    # no external resources: everything is inline
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page)
    assert "<script" not in page and "<link" not in page
    uris = re.findall(r'src="data:image/jpeg;base64,([^"]+)"', page)
    assert len(uris) == 6 and base64.b64decode(uris[0]) == IMG


def test_html_escapes_text(tmp_path, verifier_prompt):
    nasty = '<script>alert("x")</script> & <b>bold</b>'
    recs = [rec("<id>", 0.9, 1, query=nasty, kind="a&b"), rec("q", 0.1, 0)]
    page = write_audit(recs, tmp_path, prompt=verifier_prompt)["index.html"].read_text(encoding="utf-8")
    assert "<script>" not in page and "<b>bold" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in page
    assert "&lt;id&gt;" in page and "a&amp;b" in page
    # the CSV keeps the raw text, quoted by the csv module
    assert read_csv(tmp_path / "audit.csv")[0]["query"] == nasty


def test_unicode_and_commas_survive_csv(tmp_path, verifier_prompt):
    recs = [rec("u", 0.8, 1, query='the "big", naïve café chair'), rec("v", 0.3, 0)]
    write_audit(recs, tmp_path, prompt=verifier_prompt)
    assert read_csv(tmp_path / "audit.csv")[0]["query"] == 'the "big", naïve café chair'


def test_byte_identical_rerun(tmp_path, verifier_prompt):
    digests = []
    for run in ("a", "b"):
        written = write_audit(select_audit(RECORDS, 6), tmp_path / run, prompt=verifier_prompt)
        digests.append({k: hashlib.sha256(p.read_bytes()).hexdigest() for k, p in written.items()})
    assert digests[0] == digests[1]


def test_not_an_image_fails(tmp_path, verifier_prompt):
    bad = rec("a", 0.9, 1)
    bad["image"] = b"not an image"
    with pytest.raises(ValueError, match="JPEG"):
        write_audit([bad], tmp_path, prompt=verifier_prompt)


def test_a_third_answer_is_named_and_judged_as_not_accepted(tmp_path, verifier_prompt):
    three = Prompt(verifier_prompt.system, verifier_prompt.user, ("ACCEPT", "REJECT", "BORDERLINE"))
    recs = [rec("kept", 0.1, 2, kind="borderline"), rec("passed", 0.9, 2, kind="borderline"), rec("a", 0.8, 1)]
    written = write_audit(select_audit(recs, 3), tmp_path, prompt=three)
    rows = {r["example_id"]: r for r in read_csv(written["audit.csv"])}
    assert (rows["kept"]["decision"], rows["kept"]["correct"]) == ("not ACCEPT", "1")  # routed to a person: right
    assert (rows["passed"]["decision"], rows["passed"]["correct"]) == ("ACCEPT", "0")  # auto-passed: wrong
    page = written["index.html"].read_text(encoding="utf-8")
    assert "the verifier says ACCEPT, the label is BORDERLINE" in page and "BORDERLINE (2)" in page
    # a label that names no answer of the prompt is an error naming the record
    with pytest.raises(ValueError, match="'kept': label 2 names no answer"):
        write_audit(recs, tmp_path / "two", prompt=verifier_prompt)

import json

from maskgate import cli
from tests.test_render import rendered  # noqa: F401  (fixture)


def test_export_writes_plan_rows_and_images(rendered, tmp_path, verifier_prompt):  # noqa: F811
    folder, report = rendered
    assert cli.main(["export", "--rendered", str(folder), "--out", str(tmp_path / "ex")]) == 0
    lines = [json.loads(l) for l in (tmp_path / "ex/rows-train.jsonl").read_text().splitlines()]
    assert len(lines) == report["examples"]["train"]
    for row in lines:
        assert {"path_to_overlay_image", "prompt_text", "label_text"} <= set(row)
        assert (tmp_path / "ex" / row["path_to_overlay_image"]).read_bytes()[:2] == b"\xff\xd8"
        assert row["label_text"] in verifier_prompt.answers


def test_export_without_shards_says_what_to_do(tmp_path, capsys):
    assert cli.main(["export", "--rendered", str(tmp_path / "none")]) == 1
    assert "dvc repro render" in capsys.readouterr().err

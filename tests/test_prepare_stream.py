"""prepare streams its rows (validation.Validation, tables.ExternalSort): the output must be what sorting
every row at once gives, byte for byte, whatever the run size, with a test role and its exclusions."""
import random

import pytest

from maskgate.data import prepare, sources
from maskgate.data.prepared import ROW_SCHEMA, SPLITS
from maskgate.data.split import split_by_image
from maskgate.data.validation import validate_all
from maskgate.utils import tables
from tests.conftest import box_mask, jpeg_bytes, make_row, rle, settings

H, W = 24, 32


def source_rows(seed: int = 0):
    """Train rows on 30 images (some broken, some duplicated, some on test images) and test rows on 6."""
    rng = random.Random(seed)
    boxes = [rle(box_mask(H, W, 2 * k, 2 * k + 6, 3 * k, 3 * k + 8)) for k in range(4)]
    images = {f"img{i:02d}.jpg": jpeg_bytes(H, W) for i in range(36)}
    train, test = [], []
    for n in range(150):
        image = f"img{rng.randrange(33):02d}.jpg"  # 30..32 are test images too: those train rows are skipped
        train.append(make_row(f"t{rng.randrange(10**6)}-{n}", image, f"thing {n}", boxes, [[rng.randrange(4)]]))
    train += [make_row("t-dup-a", "img01.jpg", "q", boxes, [[0]]), make_row("t-dup-a", "img02.jpg", "q", boxes, [[1]]),
              make_row("t-bad", "img03.jpg", "q", boxes, [[9]]), make_row("t-gone", "nope.jpg", "q", boxes, [[0]])]
    rng.shuffle(train)
    for n in range(40):
        test.append(make_row(f"validation/{n}", f"img{30 + rng.randrange(6):02d}.jpg", f"test {n}", boxes, [[n % 4]]))
    return train, test, images


def in_memory(train, test, images, cfg, seed, limits):
    """What prepare wrote when it held every row: validate, exclude, split, sort each split at once."""
    store = sources.MemoryImages(images)
    tr, tr_skip, _ = validate_all(iter(train), store, cfg.mask_size_mismatch, limits)
    te, te_skip, _ = validate_all(iter(test), store, cfg.mask_size_mismatch, limits)
    test_images = {r.image for r in te}
    dropped = [r for r in tr if r.image in test_images]
    tr = [r for r in tr if r.image not in test_images]
    side = split_by_image({r.image for r in tr}, cfg.val_fraction, seed)
    side.update((i, "test") for i in test_images)
    split_rows = {s: sorted((r for r in tr + te if side[r.image] == s), key=lambda r: (r.image, r.row_id))
                  for s in SPLITS}
    return split_rows, tr_skip, dropped


@pytest.mark.parametrize("run_rows, fan_in", [(2048, 32), (7, 3), (1, 2)])
def test_streamed_prepare_writes_what_sorting_all_rows_at_once_wrote(tmp_path, params, monkeypatch, run_rows, fan_in):
    train, test, images = source_rows()
    monkeypatch.setattr(sources, "load", lambda data, seed, max_line_bytes=None: sources.Source(
        {"train": iter(train), "test": iter(test)}, sources.MemoryImages(images), {"fake": True}))
    real_init = tables.ExternalSort.__init__
    monkeypatch.setattr(tables.ExternalSort, "__init__",
                        lambda self, *a, **k: real_init(self, *a, **{**k, "fan_in": fan_in, "row_group": 3}))
    s = settings(params)
    report = prepare.prepare(s.data, s.prepare, s.seed, tmp_path / "p", s.limits, run_rows=run_rows)

    want, tr_skip, dropped = in_memory(train, test, images, s.prepare, s.seed, s.limits)
    assert dropped and all(len(want[split]) for split in SPLITS)  # the case covers each split and the exclusion
    for split in SPLITS:
        tables.write_table([prepare.row_record(r) for r in want[split]], tmp_path / f"want-{split}.parquet", ROW_SCHEMA)
        assert (tmp_path / "p" / f"rows-{split}.parquet").read_bytes() == (tmp_path / f"want-{split}.parquet").read_bytes()
        assert [r["image"] for r in tables.iter_shards(tmp_path / "p", f"images-{split}")] == \
            sorted({r.image for r in want[split]})
    assert report["kept"] == {split: len(want[split]) for split in SPLITS}
    train_report = report["by_source_split"]["train"]
    assert train_report["skipped"] == {**tr_skip["counts"], "image_in_test": len(dropped)}
    assert train_report["skipped_examples"]["image_in_test"] == \
        f"row {dropped[0].row_id}: image {dropped[0].image} is in the test split"
    assert train_report["skipped"]["duplicate_id"] == 1 and train_report["skipped"]["missing_image"] == 1
    assert not (tmp_path / "p" / ".runs").exists() and sorted(p.name for p in (tmp_path / "p").iterdir()) == \
        sorted([f"rows-{s}.parquet" for s in SPLITS] + [f"images-{s}-00000.parquet" for s in SPLITS])


def test_external_sort_is_stable_and_bounded(tmp_path):
    import pyarrow as pa

    schema = pa.schema([("k", pa.int32()), ("n", pa.int32())])
    rng = random.Random(0)
    records = [{"k": rng.randrange(20), "n": i} for i in range(590)]  # 37 runs: merges of runs of every age
    sort = tables.ExternalSort(tmp_path / "runs", schema, key=lambda r: r["k"], run=16, fan_in=4, row_group=5)
    for r in records:
        sort.add(r)
        assert len(sort.buffer) < 16
    assert list(sort.sorted()) == sorted(records, key=lambda r: r["k"])
    assert len(sort.runs) <= 4  # merged down to fan_in runs before the last merge

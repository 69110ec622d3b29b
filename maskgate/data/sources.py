"""Where MaskGroups rows and their images come from: the hub, a local copy, or the demo.

Every source yields raw rows (dicts in MaskGroups row format, or a `RawError` for a line that
could not even be parsed) and an image store that returns the encoded bytes of an image by the
row's `image` name. Validation happens later, in `validation.py`, the same for every source.
"""
from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator

from maskgate.config import Data
from maskgate.data import demo
from maskgate.utils import hub
@dataclass(frozen=True)
class RawError:
    """A row that could not be parsed at all: where it was and why."""
    where: str
    reason: str
    detail: str


class ImageMissing(KeyError):
    pass


def safe_name(name: object) -> str | None:
    """The image name if it stays inside the images folder, else None."""
    if not isinstance(name, str) or not name or "\\" in name or "\x00" in name:
        return None
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or name.startswith("~"):
        return None
    return str(p)


class FolderImages:
    """Images in a folder, looked up by relative name."""

    def __init__(self, root: Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"images folder not found: {self.root}")

    def read(self, name: str) -> bytes:
        path = self.root / name
        try:
            found = path.is_file()
        except (OSError, ValueError):  # a name too long for the file system: no such image here
            found = False
        if not found:
            raise ImageMissing(name)
        return path.read_bytes()


class ZipImages:
    """Images inside a zip archive (MaskGroups-HQ ships `images_resized.zip`).

    Names are matched exactly, or under the archive's single top folder if it has one.
    """

    def __init__(self, path: Path):
        self.zip = zipfile.ZipFile(path)
        names = [n for n in self.zip.namelist() if not n.endswith("/")]
        tops = {n.split("/", 1)[0] for n in names if "/" in n}
        self.prefix = f"{tops.pop()}/" if len(tops) == 1 and all("/" in n for n in names) else ""
        self.names = set(names)

    def read(self, name: str) -> bytes:
        for candidate in (name, self.prefix + name):
            if candidate in self.names:
                return self.zip.read(candidate)
        raise ImageMissing(name)


class MemoryImages:
    def __init__(self, images: dict[str, bytes]):
        self.images = images

    def read(self, name: str) -> bytes:
        if name not in self.images:
            raise ImageMissing(name)
        return self.images[name]


def read_rows_file(path: Path, max_line_bytes: int | None = None) -> Iterator[dict | RawError]:
    """Rows of a JSONL, JSON (a list) or parquet file.

    JSONL is read line by line rather than through `datasets`' JSON builder so that one broken
    line becomes one counted skip naming its line, instead of failing the whole file. A line over
    `max_line_bytes` (limits.max_line_bytes) is skipped unread (`over_limit`), never held whole.
    Parquet is read one row group at a time, so a rows file as big as the dataset is never held;
    a JSON list is read whole (a list cannot be parsed in parts).
    """
    if path.suffix == ".parquet":
        from maskgate.utils.tables import iter_records
        yield from iter_records(path)
        return
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: not a valid UTF-8 JSON file: {e}") from None
        except (ValueError, RecursionError) as e:  # an int of over 4300 digits, arrays nested too deep
            raise ValueError(f"{path}: not a JSON file Python can read: {type(e).__name__}: {e}") from None
        if not isinstance(data, list):
            raise ValueError(f"{path}: a .json rows file must hold a list of rows")
        yield from data
        return
    from maskgate.utils.lines import read_lines

    for line in read_lines(path, max_line_bytes):
        where = f"{path.name}:{line.number}"
        if line.overlong:
            yield RawError(where, "over_limit",
                           f"the line is {line.size} bytes > limits.max_line_bytes = {max_line_bytes}")
            continue
        if not line.body.strip():
            continue
        try:
            yield json.loads(line.body.decode("utf-8"))
        except UnicodeDecodeError as e:
            yield RawError(where, "not_utf8", str(e))
        except json.JSONDecodeError as e:
            yield RawError(where, "bad_json", str(e))
        except (ValueError, RecursionError) as e:  # an int of over 4300 digits, arrays nested too deep
            yield RawError(where, "bad_json", f"{type(e).__name__}: {e}")


def local_rows_files(root: Path) -> list[Path]:
    files = sorted(p for ext in ("*.jsonl", "*.json", "*.parquet") for p in Path(root).glob(ext))
    if not files:
        raise FileNotFoundError(f"no rows file (*.jsonl, *.json, *.parquet) in {root}")
    return files


def load_local(root: Path, max_line_bytes: int | None = None) -> Source:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data.path is not a folder: {root}")
    files = local_rows_files(root)
    images = FolderImages(root / "images")
    return Source({"train": (row for f in files for row in read_rows_file(f, max_line_bytes))}, images,
                  {"path": str(root), "files": [f.name for f in files]})


OFFLINE_DATA = "or use data.source=local with data.path=<a local copy>, or data.source=demo"


@dataclass
class Source:
    """Raw rows by role, the image store, and what the source was (for the report).

    `rows["train"]` is split by image into train and val; `rows["test"]`, when there, stays out
    of training and is scored apart (the hub's own evaluation rows).
    """
    rows: dict[str, Iterator[dict | RawError]]
    images: object
    info: dict


def load_hub(repo: str, revision: str, train_split: str, test_split: str, images_file: str) -> Source:
    """Rows through `datasets.load_dataset`, images from the archive shipped beside them, one commit for both.

    The hub's `train_split` becomes train and val; its `test_split` is kept apart as test. A hub with
    a single split gives train and val only (said in `info["note"]`). Row ids are namespaced by the hub
    split ("validation/17"), since ids may restart in each split. The token, if any, comes from the
    environment (HF_TOKEN) through huggingface_hub, never from params.
    """
    import datasets
    from huggingface_hub import hf_hub_download

    commit = hub.resolve(repo, revision, "dataset", OFFLINE_DATA)
    where = f"dataset {repo} at {commit[:10]}"
    with hub.errors(where):
        names = list(datasets.get_dataset_split_names(repo, revision=commit))
    roles, note = split_roles(names, train_split, test_split, repo)

    def rows(split: str) -> Iterator[dict]:
        with hub.errors(f"split {split!r} of {where}"):
            try:
                table = datasets.load_dataset(repo, split=split, revision=commit)
            except (datasets.exceptions.DatasetGenerationError, datasets.exceptions.DatasetNotFoundError,
                    ValueError, TypeError) as e:  # mixed schemas, unreadable files: one line, not a traceback
                raise hub.HubError(f"split {split!r} of {where} could not be read as rows "
                                   f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        for row in table:
            yield {**row, "id": f"{split}/{row.get('id')}"} if row.get("id") is not None else row

    with hub.errors(f"{images_file} of {where}"):
        zip_path = hf_hub_download(repo, images_file, repo_type="dataset", revision=commit)
    try:
        images = ZipImages(Path(zip_path))
    except zipfile.BadZipFile as e:
        raise ValueError(f"{images_file} of {where} is not a readable zip archive: {e}") from None
    info = {"repo": repo, "revision": revision, "commit": commit, "hub_splits": names,
            "roles": roles, **({"note": note} if note else {})}
    return Source({role: rows(split) for role, split in roles.items()}, images, info)


def split_roles(names: list[str], train_split: str, test_split: str, repo: str) -> tuple[dict, str | None]:
    """{"train": hub split[, "test": hub split]} and a note when the hub's splits are not the usual two."""
    if train_split in names:
        roles = {"train": train_split}
        if test_split in names and test_split != train_split:
            return {**roles, "test": test_split}, None
        return roles, f"{repo} has no split {test_split!r} (splits: {names}): no test section"
    if len(names) == 1:
        return {"train": names[0]}, (f"{repo} has a single split {names[0]!r}: train and val are split from it "
                                     "by image, and there is no test section")
    raise ValueError(f"data.hub_train_split={train_split!r} is not a split of {repo}; it has {names}")


def load_demo(n_images: int, seed: int) -> Source:
    rows, images = demo.generate(n_images, seed)
    return Source({"train": iter(rows)}, MemoryImages(images), {"demo_images": n_images})


def load(data: Data, seed: int, max_line_bytes: int | None = None) -> Source:
    """The rows and image store that `data.source` names; `max_line_bytes`: for a local JSONL rows file."""
    if data.source == "hub":
        return load_hub(data.hub_repo, data.hub_revision, data.hub_train_split, data.hub_test_split, data.hub_images)
    if data.source == "local":
        return load_local(Path(data.path), max_line_bytes)
    return load_demo(data.demo_images, seed)

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

from maskgate import demo


@dataclass(frozen=True)
class RawError:
    """A row that could not be parsed at all: where it was and why."""
    where: str
    reason: str
    detail: str


class ImageMissing(KeyError):
    pass


class HubUnreachable(RuntimeError):
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
        if not path.is_file():
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


def read_rows_file(path: Path) -> Iterator[dict | RawError]:
    """Rows of a JSONL, JSON (a list) or parquet file.

    JSONL is read line by line rather than through `datasets`' JSON builder so that one broken
    line becomes one counted skip naming its line, instead of failing the whole file.
    """
    if path.suffix == ".parquet":
        from maskgate.tables import open_parquet
        yield from open_parquet(path).read().to_pylist()
        return
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: not a valid UTF-8 JSON file: {e}") from None
        if not isinstance(data, list):
            raise ValueError(f"{path}: a .json rows file must hold a list of rows")
        yield from data
        return
    with path.open("rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path.name}:{lineno}"
            try:
                yield json.loads(line.decode("utf-8"))
            except UnicodeDecodeError as e:
                yield RawError(where, "not_utf8", str(e))
            except json.JSONDecodeError as e:
                yield RawError(where, "bad_json", str(e))


def local_rows_files(root: Path) -> list[Path]:
    files = sorted(p for ext in ("*.jsonl", "*.json", "*.parquet") for p in Path(root).glob(ext))
    if not files:
        raise FileNotFoundError(f"no rows file (*.jsonl, *.json, *.parquet) in {root}")
    return files


def load_local(root: Path) -> tuple[Iterator[dict | RawError], FolderImages]:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data.path is not a folder: {root}")
    files = local_rows_files(root)
    images = FolderImages(root / "images")
    return (row for f in files for row in read_rows_file(f)), images


def load_hub(repo: str, split: str, images_file: str) -> tuple[Iterator[dict], ZipImages]:
    """Rows through `datasets.load_dataset`, images from the archive shipped beside them.

    The token, if any, comes from the environment (HF_TOKEN) through huggingface_hub, never from
    params. Which splits the hub exposes is not confirmed: "all" loads every one there is.
    """
    import datasets
    from huggingface_hub import hf_hub_download

    try:
        names = datasets.get_dataset_split_names(repo)
    except (ConnectionError, OSError) as e:  # datasets wraps hub and network failures in these
        raise HubUnreachable(f"could not load {repo} from the Hugging Face hub ({e}). Offline, use "
                             "data.source=local with data.path=<a local copy>, or data.source=demo") from None
    if split != "all" and split not in names:
        raise ValueError(f"data.hub_split={split!r} is not a split of {repo}; it has {names}")
    chosen = names if split == "all" else [split]
    rows = (row for s in chosen for row in datasets.load_dataset(repo, split=s))
    return rows, ZipImages(hf_hub_download(repo, images_file, repo_type="dataset"))


def load_demo(n_images: int, seed: int) -> tuple[Iterator[dict], MemoryImages]:
    rows, images = demo.generate(n_images, seed)
    return iter(rows), MemoryImages(images)


def load(params: dict):
    """The raw rows and image store that params' `data.source` names."""
    d = params["data"]
    if d["source"] == "hub":
        return load_hub(d["hub_repo"], d["hub_split"], d["hub_images"])
    if d["source"] == "local":
        return load_local(Path(d["path"]))
    if d["source"] == "demo":
        return load_demo(int(d["demo_images"]), int(params["seed"]))
    raise ValueError(f"data.source must be hub, local or demo, got {d['source']!r}")

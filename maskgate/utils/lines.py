"""Lines of a text file read with a bound: a line longer than the bound is never held whole.

The gate's manifests and prepare's JSONL rows files both come from other people's tools; one line
of gigabytes must cost a counted bad line, not the memory to hold it (limits.max_line_bytes).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

PIECE = 1 << 20  # bytes read at a time from the rest of an overlong line


@dataclass(frozen=True)
class Line:
    number: int  # 1-based
    body: bytes  # without the line end; of an overlong line only its first max_bytes bytes or so
    size: int  # bytes of the whole line, its end not counted
    overlong: bool
    digest: str | None = None  # an overlong line's sha256 (16 hex digits) over all its bytes, to tell it apart


def read_lines(path: Path, max_bytes: int | None) -> Iterator[Line]:
    """Every line of `path`, blank ones included; max_bytes None = no bound."""
    with open(path, "rb") as f:
        number = 0
        while True:
            raw = f.readline() if max_bytes is None else f.readline(max_bytes + 2)  # + "\r\n"
            if not raw:
                return
            number += 1
            body = raw.rstrip(b"\r\n")
            if raw.endswith(b"\n") or max_bytes is None or len(body) <= max_bytes:
                yield Line(number, body, len(body), overlong=False)
                continue
            digest, size = hashlib.sha256(body), len(body)  # the rest, in pieces, to the line's end
            while not raw.endswith(b"\n"):
                raw = f.readline(PIECE)
                if not raw:
                    break
                piece = raw.rstrip(b"\r\n")
                digest.update(piece)
                size += len(piece)
            yield Line(number, body, size, overlong=True, digest=digest.hexdigest()[:16])

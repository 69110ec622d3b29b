"""A small local Hugging Face hub over real HTTP, for tests and GPU rehearsals without internet.

Why: the pipeline's hub path (`datasets.load_dataset`, `hf_hub_download`, `from_pretrained`, Unsloth)
must run its own download code in CI, where there is no network and the cache starts empty. With
`HF_ENDPOINT` pointing here, huggingface_hub, datasets and transformers talk to this server exactly as
they talk to huggingface.co: nothing is monkeypatched, nothing is put in the cache beforehand.

What it serves: a folder laid out as ROOT/models/<org>/<name>/<files> and
ROOT/datasets/<org>/<name>/<files> (subfolders allowed). The folder is read on every request, so a
repo added while the server runs is seen. Each repo has one commit, on branch `main`: its sha is a
sha1 over the sorted (path, sha256) pairs of its files, so the same files always give the same
revision and a pinned revision means pinned bytes. A file `.gated` in a repo holds the token that
unlocks the repo's files (the hub's gated repos); it is never listed or served.

Endpoints (the hub's own paths; {kind} is `models` or `datasets`, {repo} is `org/name`):
  GET  /api/{kind}/{repo}[/revision/{rev}]        repo info: sha, siblings, gated, safetensors, ...
  GET  /api/{kind}/{repo}/tree/{rev}[/{path}]     listing; ?recursive, ?expand; Link-header pages
  POST /api/{kind}/{repo}/paths-info/{rev}        info on the given paths (HfFileSystem)
  GET  /api/{kind}/{repo}/refs | /commits/{rev} | /auth-check
  GET  /api/datasets/{repo}/parquet[/...]         there is never a parquet export: 404, as the hub
  GET  /api/whoami-v2
  HEAD|GET /{repo}/resolve/{rev}/{path}, /datasets/{repo}/resolve/{rev}/{path}   (Range supported)
  any request for host datasets-server.*           the dataset viewer: 404 (there is no export)
A revision is `main` or the repo's 40-hex sha; revisions may come url-encoded (refs%2Fconvert%2Fparquet).

Errors carry the hub's headers (X-Error-Code, X-Error-Message) and JSON body {"error": ...}, so the
libraries raise their own RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError and
GatedRepoError. Any other request is answered 404 and logged to stderr as "localhub: unhandled ...",
so one run of a client not tried here (Unsloth on a GPU machine) lists what this server lacks.

Files go out with sendfile (a 16 GB shard is never read into Python's memory). Hashes are cached
by (size, mtime, inode); `serve` computes them all before it returns, because the first HEAD of a
cold 16 GB repo would otherwise outlast the client's metadata timeout (HF_HUB_ETAG_TIMEOUT, 10 s).

Stdlib only, so the server runs in any Python without the project's environment.
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import mimetypes
import os
import re
import signal
import struct
import sys
import threading
import traceback
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

KINDS = {"models": "model", "datasets": "dataset"}
GATE_FILE = ".gated"
CHUNK = 1 << 20
# The hub stores these in LFS (its default .gitattributes) and any file of 10 MB or more; the
# difference shows in the listings (an `lfs` entry) and in which etag the resolve headers carry.
LFS_SUFFIXES = {".safetensors", ".bin", ".parquet", ".arrow", ".zip", ".tar", ".gz", ".pt", ".pth",
                ".ckpt", ".gguf", ".h5", ".msgpack", ".npy", ".npz", ".onnx", ".pkl", ".model"}
LFS_MIN_SIZE = 10 * 1024 * 1024
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
SHA = re.compile(r"^[0-9a-f]{40}$")
MAIN_NAMES = ("main", "refs/heads/main")


# ------------------------------------------------------------------------------------------------
# the repositories on disk


@dataclass(frozen=True)
class Entry:
    """One file of a repo, as the hub describes it."""

    path: str  # relative, posix
    abspath: Path
    size: int
    sha256: str
    oid: str  # git blob id: of the content, or of the LFS pointer for LFS files (as the hub reports it)
    lfs: bool
    pointer_size: int
    mtime: float

    @property
    def etag(self) -> str:
        # The hub's ETag is the git blob id for plain files and the sha256 for LFS ones.
        return self.sha256 if self.lfs else self.oid


@dataclass
class Repo:
    kind: str  # models | datasets
    id: str
    folder: Path
    token: str | None
    files: dict[str, Entry]  # sorted by path
    sha: str = ""
    dirs: dict[str, str] = field(default_factory=dict)  # folder path -> tree oid

    @property
    def singular(self) -> str:
        return KINDS[self.kind]

    def last_modified(self) -> str:
        newest = max((e.mtime for e in self.files.values()), default=0.0)
        return iso(newest)


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def git_blob_id(data_size: int, chunks) -> str:
    h = hashlib.sha1(b"blob %d\0" % data_size)
    for c in chunks:
        h.update(c)
    return h.hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


class Hashes:
    """sha256 (and git blob id) of files, cached by (size, mtime_ns, inode): hashing 16 GB takes a while."""

    def __init__(self):
        self._cache: dict[str, tuple[tuple, str, str | None]] = {}
        self._lock = threading.Lock()
        self._busy: dict[str, threading.Lock] = {}

    def get(self, path: Path, st: os.stat_result, with_blob_id: bool) -> tuple[str, str | None]:
        key, stamp = str(path), (st.st_size, st.st_mtime_ns, st.st_ino)
        hit = self._cache.get(key)
        if hit and hit[0] == stamp and (hit[2] or not with_blob_id):
            return hit[1], hit[2]
        with self._lock:
            busy = self._busy.setdefault(key, threading.Lock())
        with busy:  # two requests for a cold file hash it once
            hit = self._cache.get(key)
            if hit and hit[0] == stamp and (hit[2] or not with_blob_id):
                return hit[1], hit[2]
            sha256 = hashlib.sha256()
            blob = hashlib.sha1(b"blob %d\0" % st.st_size) if with_blob_id else None
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK):
                    sha256.update(chunk)
                    if blob:
                        blob.update(chunk)
            result = (sha256.hexdigest(), blob.hexdigest() if blob else None)
            self._cache[key] = (stamp, *result)
            return result


class Hub:
    """The repositories under ROOT, scanned afresh on each lookup (hashes are cached)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.hashes = Hashes()

    def repo_ids(self) -> list[tuple[str, str]]:
        out = []
        for kind in KINDS:
            base = self.root / kind
            for org in sorted(base.iterdir()) if base.is_dir() else []:
                for name in sorted(org.iterdir()) if org.is_dir() else []:
                    if name.is_dir():
                        out.append((kind, f"{org.name}/{name.name}"))
        return out

    def repo(self, kind: str, repo_id: str) -> Repo | None:
        parts = repo_id.split("/")
        if kind not in KINDS or len(parts) != 2 or not all(NAME.match(p) and p not in (".", "..") for p in parts):
            return None
        folder = self.root / kind / parts[0] / parts[1]
        if not folder.is_dir():
            return None
        gate = folder / GATE_FILE
        token = gate.read_text().strip() if gate.is_file() else None
        files = {}
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames.sort()
            for fn in filenames:
                p = Path(dirpath) / fn
                rel = p.relative_to(folder).as_posix()
                if rel == GATE_FILE:
                    continue
                try:
                    st = p.stat()  # follows symlinks: a repo may link its big files from elsewhere
                except FileNotFoundError:
                    continue  # a dangling link, or a file removed while scanning
                lfs = p.suffix.lower() in LFS_SUFFIXES or st.st_size >= LFS_MIN_SIZE
                sha256, blob_id = self.hashes.get(p, st, with_blob_id=not lfs)
                pointer = lfs_pointer(sha256, st.st_size)
                oid = git_blob_id(len(pointer), [pointer]) if lfs else blob_id
                files[rel] = Entry(rel, p, st.st_size, sha256, oid, lfs, len(pointer) if lfs else 0, st.st_mtime)
        files = dict(sorted(files.items()))
        repo = Repo(kind, repo_id, folder, token, files)
        commit = hashlib.sha1()
        for rel, e in files.items():
            commit.update(f"{rel}\0{e.sha256}\n".encode())
        repo.sha = commit.hexdigest()
        # A folder's oid only has to be stable and to change with its content.
        for rel, e in files.items():
            parts = rel.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                repo.dirs[d] = hashlib.sha1((repo.dirs.get(d, "") + rel + e.sha256).encode()).hexdigest()
        return repo

    def warm(self) -> None:
        """Hash every file now, so no client request waits for a cold hash."""
        for kind, repo_id in self.repo_ids():
            self.repo(kind, repo_id)


# ------------------------------------------------------------------------------------------------
# JSON shapes


def sibling(e: Entry) -> dict:
    out = {"rfilename": e.path, "size": e.size, "blobId": e.oid}
    if e.lfs:
        out["lfs"] = {"sha256": e.sha256, "size": e.size, "pointerSize": e.pointer_size}
    return out


def last_commit(repo: Repo) -> dict:
    return {"id": repo.sha, "title": "localhub snapshot", "date": repo.last_modified()}


def file_item(repo: Repo, e: Entry, expand: bool) -> dict:
    out = {"type": "file", "oid": e.oid, "size": e.size, "path": e.path}
    if e.lfs:
        out["lfs"] = {"oid": e.sha256, "size": e.size, "pointerSize": e.pointer_size}
    if expand:
        out["lastCommit"] = last_commit(repo)
        out["securityFileStatus"] = {"status": "safe", "avScan": {"virusFound": False, "virusNames": None},
                                     "pickleImportScan": None}
    return out


def dir_item(repo: Repo, path: str, expand: bool) -> dict:
    out = {"type": "directory", "oid": repo.dirs[path], "size": 0, "path": path}
    if expand:
        out["lastCommit"] = last_commit(repo)
    return out


def safetensors_summary(repo: Repo) -> dict | None:
    """The hub's `safetensors` field (parameter counts by dtype), from the files' headers."""
    counts: dict[str, int] = {}
    for e in repo.files.values():
        if not e.path.endswith(".safetensors"):
            continue
        try:
            with open(e.abspath, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
        except (OSError, ValueError, struct.error):
            return None
        for name, t in header.items():
            if name == "__metadata__":
                continue
            numel = 1
            for d in t["shape"]:
                numel *= d
            counts[t["dtype"]] = counts.get(t["dtype"], 0) + numel
    return {"parameters": counts, "total": sum(counts.values())} if counts else None


def repo_info(repo: Repo) -> dict:
    org = repo.id.split("/")[0]
    info = {
        "_id": repo.sha[:24],
        "id": repo.id,
        "author": org,
        "sha": repo.sha,
        "lastModified": repo.last_modified(),
        "createdAt": repo.last_modified(),
        "private": False,
        "gated": "manual" if repo.token else False,
        "disabled": False,
        "downloads": 0,
        "likes": 0,
        "tags": [],
        "siblings": [sibling(e) for e in repo.files.values()],
        "usedStorage": sum(e.size for e in repo.files.values()),
    }
    if repo.kind == "models":
        config = repo.files.get("config.json")
        if config is not None:
            info["library_name"] = "transformers"
            try:
                c = json.loads(config.abspath.read_bytes())
                info["config"] = {k: c[k] for k in ("architectures", "model_type") if k in c}
            except (OSError, ValueError):
                pass
        st = safetensors_summary(repo)
        if st:
            info["safetensors"] = st
    return info


# ------------------------------------------------------------------------------------------------
# HTTP


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


def take_revision(segs: list[str]) -> tuple[str, list[str]]:
    """(revision, the segments after it). A client may send `refs/...` unencoded: take its three parts."""
    if not segs:
        raise HubError(404, "Invalid rev id: ", "RevisionNotFound")
    if segs[0] == "refs" and len(segs) >= 3:
        return "/".join(segs[:3]), segs[3:]
    return segs[0], segs[1:]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the clients pool connections
    server_version = "localhub/1"
    timeout = 120  # an idle keep-alive connection frees its thread after this

    # -- plumbing

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        if self.server.log_all:
            sys.stderr.write("localhub: %s\n" % (format % args))

    def do_GET(self):
        self._dispatch()

    def do_HEAD(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def do_PUT(self):
        self._dispatch()

    def do_DELETE(self):
        self._dispatch()

    def do_PATCH(self):
        self._dispatch()

    def do_OPTIONS(self):
        self._dispatch()

    def _dispatch(self):
        url = urlsplit(self.path)
        self.query = parse_qs(url.query, keep_blank_values=True)
        length = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(length) if length else b""
        record = {"method": self.command, "path": url.path, "query": url.query, "status": None, "handled": True}
        self.server.requests.append(record)
        try:
            # Split before decoding: a revision or folder sent as one encoded segment keeps its slashes.
            segs = [unquote(s) for s in url.path.split("/")[1:]]
            if segs and segs[-1] == "":
                segs = segs[:-1]
            status = self._route(segs)
            if status is None:
                record["handled"] = False
                sys.stderr.write(f"localhub: unhandled {self.command} {url.path}"
                                 f"{'?' + url.query if url.query else ''}\n")
                sys.stderr.flush()
                status = self._error(HubError(404, f"localhub: no handler for {self.command} {url.path}"))
        except HubError as e:
            status = self._error(e)
        except (BrokenPipeError, ConnectionResetError):
            status = 499  # the client went away mid-body (it may only have wanted the headers)
            self.close_connection = True
        except Exception:  # a bug here: say so loudly, answer 500, and count the request as unanswered
            record["handled"] = False
            sys.stderr.write(f"localhub: error answering {self.command} {self.path}\n{traceback.format_exc()}")
            sys.stderr.flush()
            status = 500
            try:
                self._error(HubError(500, "localhub: internal error"))
            except OSError:
                pass
            self.close_connection = True
        record["status"] = status

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        return status

    def _json(self, obj, headers: dict | None = None, status: int = 200):
        return self._send(status, json.dumps(obj).encode(), headers)

    def _error(self, e: HubError):
        headers = dict(e.headers)
        if e.code:
            headers["X-Error-Code"] = e.code
        # a header is latin-1 on one line: a revision from the URL may be any text
        ascii_text = e.message.encode("ascii", "backslashreplace").decode()
        headers["X-Error-Message"] = ascii_text.replace("\r", " ").replace("\n", " ")
        return self._json({"error": e.message}, headers, e.status)

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        return auth[7:].strip() if auth.lower().startswith("bearer ") else None

    # -- routing: each returns the status sent, or None for a request it does not know

    def _route(self, segs: list[str]):
        method = self.command
        if (self.headers.get("Host") or "").startswith("datasets-server."):
            # datasets asks http://datasets-server.<HF_ENDPOINT host>/info and /parquet for the viewer's
            # export; if that name resolves here, say there is none (datasets then reads the repo files).
            raise HubError(404, "The dataset viewer is not available on the local hub")
        if segs[:1] == ["api"]:
            if segs[1:2] == ["whoami-v2"] and method in ("GET", "HEAD"):
                return self._whoami()
            if len(segs) >= 3 and segs[1] in KINDS:
                return self._api(segs[1], segs[2:])
            return None
        if segs[:1] == ["datasets"] and len(segs) >= 4 and segs[3] == "resolve":
            return self._resolve("datasets", f"{segs[1]}/{segs[2]}", segs[4:]) if method in ("GET", "HEAD") else None
        if len(segs) >= 3 and segs[2] == "resolve" and method in ("GET", "HEAD"):
            return self._resolve("models", f"{segs[0]}/{segs[1]}", segs[3:])
        if len(segs) >= 2 and segs[1] == "resolve" and method in ("GET", "HEAD"):
            raise self._not_found()  # a repo id without an org: none is served here
        return None

    def _api(self, kind: str, segs: list[str]):
        method = self.command
        if len(segs) == 1:  # /api/models/<id> with no org
            if method in ("GET", "HEAD"):
                raise self._not_found()
            return None
        repo_id, rest = f"{segs[0]}/{segs[1]}", segs[2:]
        action = rest[0] if rest else None
        get = method in ("GET", "HEAD")
        if action is None and get:
            return self._json(repo_info(self._repo(kind, repo_id, "main")))
        if action == "revision" and get:
            rev, more = take_revision(rest[1:])
            if more:
                return None
            return self._json(repo_info(self._repo(kind, repo_id, rev)))
        if action == "tree" and get:
            rev, path = take_revision(rest[1:])
            return self._tree(self._repo(kind, repo_id, rev), "/".join(path))
        if action == "paths-info" and method == "POST":
            rev, more = take_revision(rest[1:])
            if more:
                return None
            return self._paths_info(self._repo(kind, repo_id, rev))
        if action == "refs" and get and len(rest) == 1:
            repo = self._repo(kind, repo_id, "main")
            return self._json({"branches": [{"name": "main", "ref": "refs/heads/main", "targetCommit": repo.sha}],
                               "converts": [], "tags": []})
        if action == "commits" and get:
            rev, more = take_revision(rest[1:]) if len(rest) > 1 else ("main", [])
            if more:
                return None
            repo = self._repo(kind, repo_id, rev)
            return self._json([{"id": repo.sha, "title": "localhub snapshot", "message": "", "authors": [],
                                "date": repo.last_modified()}])
        if action == "auth-check" and get and len(rest) == 1:
            repo = self._repo(kind, repo_id, "main")
            self._check_gate(repo)
            return self._json({})
        if action == "parquet" and kind == "datasets" and get:
            # The hub answers from refs/convert/parquet, which no repo here has: datasets then reads the files.
            self._repo(kind, repo_id, "main")
            raise HubError(404, "Revision not found: refs/convert/parquet", "RevisionNotFound")
        return None

    def _whoami(self):
        if not self._token():
            raise HubError(401, "Invalid credentials in Authorization header")
        return self._json({"type": "user", "id": "0" * 24, "name": "localhub", "fullname": "localhub",
                           "orgs": [], "auth": {"type": "access_token",
                                                "accessToken": {"displayName": "localhub", "role": "read"}}})

    # -- repos, revisions, gates

    @staticmethod
    def _not_found() -> HubError:
        return HubError(404, "Repository not found", "RepoNotFound")

    def _repo(self, kind: str, repo_id: str, rev: str) -> Repo:
        repo = self.server.hub.repo(kind, repo_id)
        if repo is None:
            raise self._not_found()
        if rev not in MAIN_NAMES and rev != repo.sha:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return repo

    def _check_gate(self, repo: Repo) -> None:
        if repo.token is None:
            return
        token = self._token()
        if token == repo.token:
            return
        what = f"{repo.singular} {repo.id}"
        if token is None:
            raise HubError(401, f"Access to {what} is restricted. You must have access to it and be "
                                "authenticated to access it. Please log in.", "GatedRepo")
        raise HubError(403, f"Access to {what} is restricted and you are not in the authorized list. "
                            f"Visit {self._base_url()}/{repo.id} to ask for access.", "GatedRepo")

    def _base_url(self) -> str:
        return f"http://{self.headers.get('Host') or '%s:%d' % self.server.server_address[:2]}"

    # -- listings

    def _tree(self, repo: Repo, path: str):
        path = path.strip("/")
        if path and path not in repo.dirs:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": repo.sha})
        recursive = self.query.get("recursive", ["false"])[-1].lower() in ("1", "true")
        expand = self.query.get("expand", ["false"])[-1].lower() in ("1", "true")
        prefix = f"{path}/" if path else ""
        items = []
        for d in repo.dirs:
            if d.startswith(prefix) and (recursive or "/" not in d[len(prefix):]):
                items.append(dir_item(repo, d, expand))
        for rel, e in repo.files.items():
            if rel.startswith(prefix) and (recursive or "/" not in rel[len(prefix):]):
                items.append(file_item(repo, e, expand))
        items.sort(key=lambda i: (i["type"] != "directory", i["path"]))
        # Paginated as the hub does (a Link header with rel="next"), so a client's paging is exercised.
        size = self.server.page_size
        cursor = self.query.get("cursor", ["0"])[-1] or "0"
        if not cursor.isdigit():
            raise HubError(400, f"Invalid cursor: {cursor}")
        start = int(cursor)
        page, headers = items[start:start + size], {}
        if start + size < len(items):
            q = {k: v[-1] for k, v in self.query.items() if k != "cursor"}
            q["cursor"] = str(start + size)
            url = f"{self._base_url()}{quote(urlsplit(self.path).path, safe='/%')}?{urlencode(q)}"
            headers["Link"] = f'<{url}>; rel="next"'
        return self._json(page, headers)

    def _paths_info(self, repo: Repo):
        ctype = self.headers.get("Content-Type", "")
        if "json" in ctype:
            data = json.loads(self.body or b"{}")
            paths, expand = data.get("paths", []), bool(data.get("expand", False))
        else:
            form = parse_qs(self.body.decode(), keep_blank_values=True)
            paths = form.get("paths", [])
            expand = form.get("expand", ["false"])[-1].lower() in ("1", "true")
        if isinstance(paths, str):
            paths = [paths]
        out = []
        for p in paths:
            p = p.strip("/")
            if p in repo.files:
                out.append(file_item(repo, repo.files[p], expand))
            elif p in repo.dirs:
                out.append(dir_item(repo, p, expand))
            # the hub leaves out paths that do not exist
        return self._json(out)

    # -- files

    def _resolve(self, kind: str, repo_id: str, segs: list[str]):
        rev, path = take_revision(segs)
        repo = self._repo(kind, repo_id, rev)
        self._check_gate(repo)
        name = "/".join(path)
        entry = repo.files.get(name)
        if entry is None:
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": repo.sha})
        headers = {
            "X-Repo-Commit": repo.sha,
            "ETag": f'"{entry.etag}"',
            "Accept-Ranges": "bytes",
            "Content-Disposition": f'inline; filename="{Path(name).name}"',
        }
        if entry.lfs:
            # On the hub these come with the redirect to the CDN; sent here on the file itself.
            headers["X-Linked-Etag"] = f'"{entry.sha256}"'
            headers["X-Linked-Size"] = str(entry.size)
        start, end, status = 0, entry.size - 1, 200
        rng = self.headers.get("Range")
        if rng:
            span = parse_range(rng, entry.size)
            if span == "unsatisfiable":
                raise HubError(416, "Requested range not satisfiable", None, {"Content-Range": f"bytes */{entry.size}"})
            if span is not None:
                start, end = span
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end}/{entry.size}"
        length = max(0, end - start + 1)
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(length))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command == "GET" and length:
            with open(entry.abspath, "rb") as f:
                # sendfile: the kernel copies from the page cache, never the whole file through Python
                # (a short count, if the file shrank meanwhile, shows the client a short body: it retries)
                self.connection.sendfile(f, offset=start, count=length)
        return status


def parse_range(header: str, size: int):
    """(start, end) inclusive for one `bytes=` range, None to ignore it (send all), or "unsatisfiable"."""
    m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header)
    if not m or (not m.group(1) and not m.group(2)):
        return None  # several ranges or another unit: answering 200 with the whole file is allowed
    a, b = m.group(1), m.group(2)
    if a:
        start = int(a)
        end = min(int(b), size - 1) if b else size - 1
        if start >= size or (b and int(b) < start):
            return "unsatisfiable"
    else:
        n = int(b)
        if n == 0:
            return "unsatisfiable"
        start, end = max(0, size - n), size - 1
    return start, end


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        # A client dropping an idle keep-alive connection is normal; anything else is worth a trace.
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError, TimeoutError)):
            return
        sys.stderr.write(f"localhub: error on a connection from {client_address}\n{traceback.format_exc()}")


class Server:
    """A running hub: `.url`, `.requests` (one dict per request), `.stop()`; a context manager."""

    def __init__(self, root: Path, host: str = "127.0.0.1", port: int = 0, page_size: int = 1000,
                 log_all: bool = False, warm: bool = True):
        self.hub = Hub(root)
        if warm:
            self.hub.warm()
        self.httpd = _HTTPServer((host, port), Handler)
        self.httpd.hub = self.hub
        self.httpd.requests = []
        self.httpd.page_size = page_size
        self.httpd.log_all = log_all
        host, port = self.httpd.server_address[:2]
        self.url = f"http://{host}:{port}"
        self._thread: threading.Thread | None = None

    @property
    def requests(self) -> list[dict]:
        return self.httpd.requests

    def unhandled(self) -> list[dict]:
        return [r for r in self.requests if not r["handled"]]

    def start(self) -> Server:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="localhub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join()
            self._thread = None
        self.httpd.server_close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(root: Path, host: str = "127.0.0.1", port: int = 0, **kw) -> Server:
    """Serve `root` in a background thread; returns once it is listening (hashes computed)."""
    return Server(Path(root), host, port, **kw).start()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tests.hub.server", description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path, help="folder holding models/<org>/<name>/ and datasets/<org>/<name>/")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0: any free port (read it from --ready-file)")
    ap.add_argument("--ready-file", type=Path, help="written with the URL once the server listens")
    ap.add_argument("--log-all", action="store_true", help="log every request to stderr, not only unhandled ones")
    args = ap.parse_args(argv)
    if not args.root.is_dir():
        ap.error(f"not a folder: {args.root}")
    server = Server(args.root, args.host, args.port, log_all=args.log_all)
    sys.stderr.write(f"localhub: serving {args.root} at {server.url}\n")
    for kind, repo_id in server.hub.repo_ids():
        sys.stderr.write(f"localhub:   {kind}/{repo_id} @ {server.hub.repo(kind, repo_id).sha}\n")
    sys.stderr.flush()
    if args.ready_file:
        tmp = args.ready_file.with_name(args.ready_file.name + ".tmp")
        tmp.write_text(server.url + "\n")
        tmp.replace(args.ready_file)  # atomic: a waiting script never reads half a URL
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `kill` from a script: close the socket, exit 0
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()


if __name__ == "__main__":
    main()

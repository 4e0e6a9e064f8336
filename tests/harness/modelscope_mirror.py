"""A local ModelScope hub for the download tests (what ``MODELSCOPE_ENDPOINT`` points a user at): the files of local
folders served under repository ids the way the hub's v1 API serves them to modelscope's downloads (read in the
installed modelscope's hub client):

- ``GET /api/v1/models/{repo}/revisions``: the branches and tags (``Data.RevisionMap``; one branch, ``master``),
  which a single-file download asks first to pick its revision;
- ``GET /api/v1/models/{repo}/repo/files?Revision=&Recursive=&Root=``: the file list (``Data.Files``: ``Path``,
  ``Name``, ``Size``, ``Sha256``, ``Type``), only under ``Root`` when given (a snapshot download limited by literal
  file patterns lists their folders only);
- ``GET /api/v1/models/{repo}/repo?Revision=&FilePath=``: the file itself, with its ``Content-Length``;
- anything else (the region probe ``/api/v1/repos/internalAccelerationInfo``) 404 with the hub's JSON envelope.

Plain http, no login: the client needs neither. The body goes out in chunks with a pause between them, so a download
takes several progress steps; a file named in ``truncated`` ("repo/path") is listed at its true size and hash but
served 1000 bytes short with a Content-Length that says so, as a mirror holding a broken copy does."""

from __future__ import annotations

import hashlib
import json
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from .hub_mirror import LocalHub, serving, write_body

API = "/api/v1/models/"


@dataclass
class ModelScopeMirror(LocalHub):
    """The ModelScope hub; ``served`` holds ("revisions" / "files", repo) and ("file", "repo/path")."""

    def files(self, repo: str) -> list[Path]:
        folder = self.repos[repo]
        return sorted(p for p in folder.rglob("*") if p.is_file()
                      and not any(part.startswith(".") for part in p.relative_to(folder).parts))

    def listing(self, repo: str, root: str) -> list[dict]:
        """The repository's files (and their folders, as the hub lists them) under ``root`` ("" for all)."""
        folder = self.repos[repo]
        entries, folders = [], set()
        for p in self.files(repo):
            rel = p.relative_to(folder).as_posix()
            if root and not rel.startswith(root.strip("/") + "/"):
                continue
            parents = rel.split("/")[:-1]
            folders.update("/".join(parents[:i + 1]) for i in range(len(parents)))
            data = p.read_bytes()
            entries.append({"Path": rel, "Name": p.name, "Type": "blob", "Size": len(data),
                            "Sha256": hashlib.sha256(data).hexdigest(), "Revision": "master"})
        return [{"Path": f, "Name": f.rsplit("/", 1)[-1], "Type": "tree", "Size": 0} for f in sorted(folders)
                if not root or f.startswith(root.strip("/") + "/")] + entries


def _repo_and_rest(path: str, repos: dict[str, Path]) -> tuple[str, str] | None:
    """("owner/name", what follows it) for a path under /api/v1/models/ naming a served repository."""
    if not path.startswith(API):
        return None
    owner, _, rest = path[len(API):].partition("/")
    name, _, rest = rest.partition("/")
    repo = f"{owner}/{name}"
    return (repo, rest) if repo in repos else None


def _handler(mirror: ModelScopeMirror) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet: the test reads ``served``
            pass

        def send_json(self, status: int, data) -> None:
            body = json.dumps({"Code": status, "Success": status == 200, "Message": "" if status == 200 else
                               "not found", "RequestId": "local", "Data": data}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def send_file(self, repo: str, name: str) -> None:
            file = mirror.repos[repo] / name
            if not name or not file.is_file() or file not in mirror.files(repo):
                self.send_json(404, None)
                return
            mirror.served.append(("file", f"{repo}/{name}"))
            data = file.read_bytes()
            sent = data[:-1000] if f"{repo}/{name}" in mirror.truncated else data
            self.send_response(200)
            self.send_header("Content-Length", str(len(sent)))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            write_body(mirror, self.wfile, f"{repo}/{name}", sent)

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            parts = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(parts.query))
            found = _repo_and_rest(urllib.parse.unquote(parts.path), mirror.repos)
            if found is None:
                self.send_json(404, None)
                return
            repo, rest = found
            if rest == "revisions":
                mirror.served.append(("revisions", repo))
                self.send_json(200, {"RevisionMap": {"Branches": [{"Revision": "master", "CreatedAt": 0}],
                                                     "Tags": []}})
            elif rest == "repo/files" and query.get("Revision", "master") == "master":
                mirror.served.append(("files", repo))
                self.send_json(200, {"Files": mirror.listing(repo, query.get("Root", ""))})
            elif rest == "repo" and query.get("Revision", "master") == "master":
                self.send_file(repo, query.get("FilePath", ""))
            else:
                self.send_json(404, None)

    return Handler


@contextmanager
def running_modelscope_mirror(repos: dict[str, Path], **settings) -> Iterator[ModelScopeMirror]:
    """A ModelScopeMirror serving ``repos`` on 127.0.0.1 (a free port) from a thread, for the ``with`` block."""
    with serving(ModelScopeMirror(dict(repos), **settings), _handler, "modelscope-mirror") as mirror:
        yield mirror


def modelscope_at(monkeypatch, name: str, value: str, cache: Path | None = None) -> None:
    """What setting MODELSCOPE_ENDPOINT (or the older MODELSCOPE_DOMAIN) before the first download does (modelscope
    reads it once per process, into its default configuration); ``cache``: MODELSCOPE_CACHE too (where modelscope
    keeps its lock files, even for a download into a folder of ours)."""
    from modelscope_hub import config

    monkeypatch.delenv("MODELSCOPE_ENDPOINT", raising=False)
    monkeypatch.delenv("MODELSCOPE_DOMAIN", raising=False)
    monkeypatch.setenv(name, value)
    if cache is not None:
        monkeypatch.setenv("MODELSCOPE_CACHE", str(cache))
    monkeypatch.setattr(config, "_default_config", None)

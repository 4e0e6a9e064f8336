"""A local Hugging Face hub mirror for the download tests (what ``HF_ENDPOINT`` points a user at): files of local
folders served the way the hub's file API serves them to ``hf_hub_download``: HEAD and GET on
``/{repo}/resolve/{revision}/{path}`` with ``X-Repo-Commit``, ``ETag`` (the file's sha256, as for large files) and
``Content-Length``; no Xet headers, so huggingface_hub takes its plain HTTP path; and the file list
``list_repo_files`` reads (GET ``/api/models/{repo}/tree/{revision}``, one page). The body goes out in chunks with a
pause between them, so a download of a few MB takes several progress steps; a file named in ``truncated`` is
announced at its full size and served short, as a broken mirror does."""

from __future__ import annotations

import hashlib
import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass
class LocalHub:
    """What a local hub serves and what it saw (the Hugging Face mirror here, the ModelScope hub beside it)."""
    repos: dict[str, Path]  # repository id -> the folder holding its files
    chunk: int = 256 * 1024
    pause_s: float = 0.0  # between chunks
    truncated: set[str] = field(default_factory=set)  # "repo/path" served 1000 bytes short
    served: list[tuple[str, str]] = field(default_factory=list)  # (what, "repo" or "repo/path") per answer
    sent: dict[str, int] = field(default_factory=dict)  # "repo/path" -> bytes of its body written before the client left
    url: str = ""


@dataclass
class HubMirror(LocalHub):
    """The Hugging Face mirror; ``served`` holds (HTTP method, "repo/path")."""

    def file_of(self, url_path: str) -> tuple[str, str, Path] | None:
        path = urllib.parse.unquote(urllib.parse.urlsplit(url_path).path).lstrip("/")
        repo, sep, rest = path.partition("/resolve/")
        if not sep or repo not in self.repos:
            return None
        _revision, _, name = rest.partition("/")
        file = self.repos[repo] / name
        return (repo, name, file) if name and file.is_file() else None


    def tree_of(self, url_path: str) -> list[dict] | None:
        """The repository's files as the hub's tree API lists them, or None when ``url_path`` asks for no served
        repository's tree."""
        path = urllib.parse.unquote(urllib.parse.urlsplit(url_path).path)
        if not path.startswith("/api/models/") or "/tree/" not in path:
            return None
        repo = path[len("/api/models/"):].partition("/tree/")[0]
        if repo not in self.repos:
            return None
        folder = self.repos[repo]
        files = sorted(p for p in folder.rglob("*") if p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(folder).parts))
        return [{"type": "file", "path": p.relative_to(folder).as_posix(), "size": p.stat().st_size,
                 "oid": hashlib.sha1(p.read_bytes()).hexdigest()} for p in files]


def write_body(mirror, out, key: str, data: bytes) -> None:
    """``data`` in ``mirror.chunk`` pieces, ``mirror.pause_s`` apart, counted in ``mirror.sent[key]``; a client that
    hangs up (a cancelled download) ends it quietly."""
    mirror.sent[key] = 0
    try:
        for start in range(0, len(data), mirror.chunk):
            out.write(data[start:start + mirror.chunk])
            out.flush()
            mirror.sent[key] += len(data[start:start + mirror.chunk])
            time.sleep(mirror.pause_s)
    except ConnectionError:
        pass


def _handler(mirror: HubMirror) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet: the test reads ``served``
            pass

        def answer(self, body: bool) -> None:
            found = mirror.file_of(self.path)
            if found is None:
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            repo, name, file = found
            data = file.read_bytes()
            mirror.served.append((self.command, f"{repo}/{name}"))
            sent = data[:-1000] if f"{repo}/{name}" in mirror.truncated else data
            self.send_response(200)
            self.send_header("X-Repo-Commit", hashlib.sha1(repo.encode()).hexdigest())
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("X-Linked-Size", str(len(data)))  # what the file should be
            self.send_header("Content-Length", str(len(sent) if body else len(data)))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            if body:
                write_body(mirror, self.wfile, f"{repo}/{name}", sent)

        def do_HEAD(self) -> None:  # noqa: N802 - http.server's name
            self.answer(body=False)

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            tree = mirror.tree_of(self.path)
            if tree is None:
                self.answer(body=True)
                return
            mirror.served.append(("GET", self.path.partition("?")[0]))
            body = json.dumps(tree).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """Quiet about a client that hangs up (a cancelled download; modelscope's region probe gives up after 0.2 s)."""
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@contextmanager
def serving(mirror, handler: Callable[[object], type[BaseHTTPRequestHandler]], name: str) -> Iterator:
    """``mirror`` answered by ``handler(mirror)`` on 127.0.0.1 (a free port, set as ``mirror.url``) from a thread,
    for the ``with`` block."""
    server = QuietServer(("127.0.0.1", 0), handler(mirror))
    mirror.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True, name=name)
    thread.start()
    try:
        yield mirror
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextmanager
def running_hub_mirror(repos: dict[str, Path], **settings) -> Iterator[HubMirror]:
    """A HubMirror serving ``repos`` on 127.0.0.1 (a free port) from a thread, for the ``with`` block."""
    with serving(HubMirror(dict(repos), **settings), _handler, "hub-mirror") as mirror:
        yield mirror


def huggingface_at(monkeypatch, url: str) -> None:
    """What setting HF_ENDPOINT before huggingface_hub is imported does (it reads it once, at import)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")


def go_online(monkeypatch) -> None:
    """The test's process online (the suite sets the offline variables), undone after the test."""
    from huggingface_hub import constants

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "AESTHETE_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

"""Start and stop a real ComfyUI server (the embedded 0.3.75 in .comfyui/ComfyUI) for tests, benchmarks and scripts."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests

from . import REPO

log = logging.getLogger(__name__)

COMFY_DIR = Path(os.environ.get("AESTHETE_COMFYUI_DIR", REPO / ".comfyui" / "ComfyUI"))
PACK_FOLDER_NAME = "comfyui-aesthete"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ComfyServer:
    """A ComfyUI process with its own base directory; the pack (and ``extra_nodes``, such as the tests' test-only
    nodes) is registered via --extra-model-paths-config, unless ``link_pack`` is False (then ComfyUI finds what is in
    ``base_dir/custom_nodes``). ``python`` runs main.py."""

    base_dir: Path
    port: int = field(default_factory=free_port)
    python: str = sys.executable
    link_pack: bool = True
    # more custom-node folders beside the pack: {folder name: source folder}
    extra_nodes: dict[str, Path] = field(default_factory=dict)
    cpu: bool = True  # --cpu; False: ComfyUI runs on its GPU (benchmarks/gpu_check.py)
    process: subprocess.Popen | None = None
    log_path: Path | None = None
    # the process's environment over the default (offline: no hub is asked); None removes a variable
    env: dict[str, str | None] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def models_dir(self) -> Path:
        return self.base_dir / "models"

    @property
    def input_dir(self) -> Path:
        return self.base_dir / "input"

    @property
    def output_dir(self) -> Path:
        return self.base_dir / "output"

    @property
    def user_dir(self) -> Path:
        return self.base_dir / "user"

    def link_model(self, folder: str, source: Path, name: str | None = None) -> str:
        """Make ``source`` (a file or a model folder) visible as models/<folder>/<name> by a symlink; returns the
        name ComfyUI lists it under."""
        dest = self.models_dir / folder / (name or source.name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.exists():
            dest.symlink_to(source, target_is_directory=source.is_dir())
        return dest.name

    def log_tail(self, chars: int = 6000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        return self.log_path.read_text(errors="replace")[-chars:]

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def start(self, timeout: float = 180.0, extra_args: list[str] | None = None) -> None:
        if not (COMFY_DIR / "main.py").exists():
            raise RuntimeError(f"{COMFY_DIR}/main.py missing: run scripts/setup.sh --test (make test does)")
        for sub in ("custom_nodes", "models", "input", "output", "user/default", "temp"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        settings = self.user_dir / "default" / "comfy.settings.json"
        if not settings.exists():  # else a Templates dialog covers the canvas on first load
            settings.write_text('{"Comfy.TutorialCompleted": true}')
        pack_args = []
        if self.link_pack:
            # the pack goes in a folder of its own, under the name a user's clone would have
            nodes_parent = self.base_dir / "extra_custom_nodes"
            nodes_parent.mkdir(exist_ok=True)
            link = nodes_parent / PACK_FOLDER_NAME
            if not link.exists():
                link.symlink_to(REPO, target_is_directory=True)
            for name, source in self.extra_nodes.items():
                if not (nodes_parent / name).exists():
                    (nodes_parent / name).symlink_to(source, target_is_directory=True)
            yaml_path = self.base_dir / "extra_model_paths.yaml"
            yaml_path.write_text(f"aesthete_tests:\n    custom_nodes: {nodes_parent}\n")
            pack_args = ["--extra-model-paths-config", str(yaml_path)]
        self.log_path = self.base_dir / "comfyui.log"
        cmd = [
            self.python, "main.py", *(["--cpu"] if self.cpu else []), "--listen", "127.0.0.1", "--port", str(self.port),
            "--disable-auto-launch", "--base-directory", str(self.base_dir),
            "--database-url", "sqlite:///:memory:", *pack_args, *(extra_args or []),
        ]
        env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        for name, value in self.env.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        logf = open(self.log_path, "wb")
        self.process = subprocess.Popen(cmd, cwd=COMFY_DIR, stdout=logf, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(self.url + "/system_stats", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.5)
        else:
            self.stop()
            raise RuntimeError(f"ComfyUI did not answer within {timeout}s:\n{self.log_tail()}")
        self.check_pack_loaded()

    def check_pack_loaded(self) -> None:
        text = self.log_text()
        packs = (PACK_FOLDER_NAME, *self.extra_nodes)
        bad = [ln for ln in text.splitlines()
               if any(pack in ln for pack in packs) and ("IMPORT FAILED" in ln or "Cannot import" in ln)]
        if bad or "Error while calling comfy_entrypoint" in text:
            raise RuntimeError("the Aesthete pack failed to import in ComfyUI:\n" + self.log_tail())

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.process = None


@contextmanager
def running_server(prefix: str, keep_log: Path | None = None, settings: dict | None = None,
                   on_start_error: Callable[[str], None] | None = None,
                   extra_nodes: dict[str, Path] | None = None, cpu: bool = True,
                   extra_args: list[str] | None = None,
                   env: dict[str, str | None] | None = None) -> Iterator[ComfyServer]:
    """A started ComfyServer on a fresh base directory (with the user's ``settings``, if given, and ``env`` over its
    offline environment: None removes a variable); afterwards it is stopped, its log copied to ``keep_log`` and the
    directory removed. A failed start calls ``on_start_error`` with the message (which holds the log's tail), else
    raises."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    if settings is not None:
        path = base / "user" / "default" / "comfy.settings.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(settings))
    server = ComfyServer(base_dir=base, extra_nodes=dict(extra_nodes or {}), cpu=cpu, env=dict(env or {}))
    try:
        try:
            server.start(extra_args=extra_args)
        except RuntimeError as e:
            if on_start_error is None:
                raise
            on_start_error(str(e))
        yield server
    finally:
        server.stop()
        if keep_log is not None and server.log_path is not None and server.log_path.exists():
            keep_log.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(server.log_path, keep_log)
        shutil.rmtree(base, ignore_errors=True)

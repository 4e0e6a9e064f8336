"""The tests' ComfyUI server: devkit's server with the test-only nodes (``comfy_test_nodes``: they look inside
MODEL/CLIP outputs) registered beside the pack."""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path

from devkit.comfy_server import ComfyServer, running_server

TEST_NODES = {"aesthete-test-nodes": Path(__file__).with_name("comfy_test_nodes")}


def running_test_server(prefix: str, *args, extra_nodes: dict[str, Path] | None = None,
                        **kwargs) -> AbstractContextManager[ComfyServer]:
    """:func:`devkit.comfy_server.running_server` (same arguments) with the test-only nodes (and ``extra_nodes``)
    loaded."""
    return running_server(prefix, *args, extra_nodes={**TEST_NODES, **(extra_nodes or {})}, **kwargs)

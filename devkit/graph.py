"""Graphs for /prompt built with ComfyUI's own GraphBuilder (comfy_execution/graph_utils.py of the embedded ComfyUI,
a module with no imports, loaded from its file so the test process imports nothing else of ComfyUI):
``g = new_graph(); ckpt = g.node("CheckpointLoaderSimple", ckpt_name=...); g.node("KSampler", model=ckpt.out(0))``,
then ``client.run(g.finalize())``; ``node.id`` names a node's outputs in the history."""

from __future__ import annotations

import importlib.util

from .comfy_server import COMFY_DIR

_spec = importlib.util.spec_from_file_location("comfy_graph_utils", COMFY_DIR / "comfy_execution" / "graph_utils.py")
_graph_utils = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_graph_utils)
GraphBuilder = _graph_utils.GraphBuilder


def new_graph():
    """A GraphBuilder whose node ids are plain numbers ("1", "2", ...), as the frontend writes them."""
    return GraphBuilder(prefix="")

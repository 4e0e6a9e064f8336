"""ComfyUI adapters: the only package of Aesthete that imports ComfyUI (comfy*, folder_paths, server).

Each ``*_nodes.py`` file covers one feature area and lists its node classes in ``NODES``. A file whose
third-party dependency is missing is skipped with a logged warning, so one missing package disables only
its own nodes (as ComfyUI-KJNodes does), never the whole pack.
"""

from __future__ import annotations

import importlib
import logging

from comfy_api.latest import ComfyExtension, io

log = logging.getLogger("aesthete")

NODE_MODULES = ("prompt_nodes", "scoring_nodes", "lora_nodes", "training_nodes", "kolors_nodes")


def load_node_classes() -> list[type[io.ComfyNode]]:
    classes: list[type[io.ComfyNode]] = []
    for name in NODE_MODULES:
        try:
            module = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as e:
            # a missing third-party package disables this area; a missing module of our own is a bug
            pack = __name__.rsplit(".", 1)[0]
            if e.name is None or e.name == pack or e.name.startswith(pack + "."):
                raise
            log.warning("Aesthete: nodes in %s disabled, missing package %r: %s", name, e.name, e)
            continue
        for cls in module.NODES:
            try:
                cls.GET_SCHEMA()  # validates it: one broken schema must not take the whole pack down
            except Exception:
                log.exception("Aesthete: node %s disabled, its schema is invalid", cls.__name__)
                continue
            classes.append(cls)
    return classes


class AestheteExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return load_node_classes()

"""ComfyUI adapters: the only package of Aesthete that imports ComfyUI (comfy*, folder_paths, server).

Each ``*_nodes.py`` file covers one feature area and lists its node classes in ``NODES``; one that adds something to
ComfyUI itself (a model folder, a model type for detection) does it in a ``register()`` function, which the
extension calls once at start-up, never at import. A file whose third-party dependency is missing is skipped with a
logged warning, so one missing package disables only its own nodes (as ComfyUI-KJNodes does), never the whole pack.
"""

from __future__ import annotations

import functools
import importlib
import logging
from types import ModuleType

from comfy_api.latest import ComfyExtension, io

from . import compat

log = logging.getLogger("aesthete")

NODE_MODULES = ("prompt_nodes", "scorer_nodes", "scoring_nodes", "lora_nodes", "training_nodes", "lora_sweep_nodes", "kolors_nodes")


@functools.cache
def area_modules() -> tuple[ModuleType, ...]:
    """The node modules that import (each once; a missing third-party package is warned about once)."""
    modules = []
    for name in NODE_MODULES:
        try:
            modules.append(importlib.import_module(f".{name}", __name__))
        except ModuleNotFoundError as e:
            # a missing third-party package disables this area; a missing module of our own is a bug
            pack = __name__.rsplit(".", 1)[0]
            if e.name is None or e.name == pack or e.name.startswith(pack + "."):
                raise
            log.warning("Aesthete: nodes in %s disabled, missing package %r: %s", name, e.name, e)
    return tuple(modules)


@compat.run_once
def start_up() -> None:
    """What the pack adds to ComfyUI (model folders, Kolors in model detection), once per process."""
    for module in area_modules():
        register = getattr(module, "register", None)
        if register is not None:
            register()


def load_node_classes() -> list[type[io.ComfyNode]]:
    classes: list[type[io.ComfyNode]] = []
    for module in area_modules():
        for cls in module.NODES:
            try:
                cls.GET_SCHEMA()  # validates it: one broken schema must not take the whole pack down
            except Exception:
                log.exception("Aesthete: node %s disabled, its schema is invalid", cls.__name__)
                continue
            classes.append(cls)
    return classes


class AestheteExtension(ComfyExtension):
    async def on_load(self) -> None:  # the newest ComfyUI calls this first
        start_up()

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        start_up()  # ComfyUI 0.3.75 never calls on_load
        return load_node_classes()

"""The one place where Aesthete touches ComfyUI internals that differ between the versions it supports.

Tested: ComfyUI 0.3.75 (the tree the test suite runs). Read against: the newest ComfyUI source (the README's
"Supported ComfyUI" section says which). What moved, and how each function here copes:

- Model detection: 0.3.75 calls ``model_config.matches(unet_config, state_dict)``; the newest calls
  ``matches(unet_config, state_dict, unet_key_prefix=...)`` on every entry of ``comfy.supported_models.models``, so
  an entry that raises stops every checkpoint load in the process. :func:`register_model_config` puts a config at the
  front of that list once, with a ``matches`` that takes whatever core passes and never raises.
- Extension start-up: the newest ComfyUI awaits ``ComfyExtension.on_load()`` before ``get_node_list()``; 0.3.75 never
  calls ``on_load``. :func:`run_once` lets both hooks call the same registration, which then runs exactly once.
- Interrupts: ``InterruptProcessingException`` derives from ``Exception`` in 0.3.75 and from ``BaseException`` in the
  newest. :func:`interrupt_exception` reads the class at call time, so ``except interrupt_exception()`` catches it in
  both, and no ``except Exception`` in the pack is relied on to catch a cancel.
- Node signatures: the newest core ``TrainLoraNode.execute`` takes more required inputs than 0.3.75's (and returns
  no MODEL). :func:`schema_defaults` fills a core node's inputs a caller does not give from its own schema.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable

import comfy.model_management
import comfy.supported_models

log = logging.getLogger("aesthete")


def interrupt_exception() -> type[BaseException]:
    """ComfyUI's cancel exception, read when called (0.3.75: an Exception; the newest: a BaseException)."""
    return comfy.model_management.InterruptProcessingException


def never_raising_matches(matches: Callable[..., bool], name: str) -> Callable[..., bool]:
    """``matches`` as a detection entry must behave: it takes whatever core's detection passes (0.3.75:
    ``(unet_config, state_dict)``; the newest adds ``unet_key_prefix=``) and a failure inside it is logged once and
    answered "no match", so core's detection goes on to the next entry instead of failing every load."""
    warned = []

    @functools.wraps(matches)
    def guarded(unet_config, state_dict=None, *args, **kwargs):
        try:
            return bool(matches(unet_config, state_dict))
        except Exception:  # noqa: BLE001 - our entry must never stop core's model detection
            if not warned:
                warned.append(True)
                log.exception("Aesthete: %s model detection failed; ComfyUI's other model types are tried", name)
            return False

    return guarded


def register_model_config(config: type) -> None:
    """Put ``config`` first in ComfyUI's detection list (once); its ``matches`` must be :func:`never_raising_matches`."""
    if config not in comfy.supported_models.models:
        comfy.supported_models.models.insert(0, config)


def run_once(function: Callable[[], None]) -> Callable[[], None]:
    """``function`` run at its first call only (registration that both ``on_load`` and ``get_node_list`` ask for)."""
    done = []

    @functools.wraps(function)
    def once() -> None:
        if not done:
            function()
            done.append(True)

    return once


def schema_defaults(node_class, given: dict) -> dict:
    """``given`` plus, for every other input of a core V3 node's schema that its ``execute`` takes, the schema's
    default (wrapped in a list for a node with ``is_input_list``), so one call works with every version's inputs."""
    schema = node_class.GET_SCHEMA()
    accepted = set(inspect.signature(node_class.execute).parameters)
    kwargs = {k: v for k, v in given.items() if k in accepted}
    for item in schema.inputs:
        if item.id in kwargs or item.id not in accepted:
            continue
        default = getattr(item, "default", None)
        kwargs[item.id] = [default] if schema.is_input_list else default
    return kwargs

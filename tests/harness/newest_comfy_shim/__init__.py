"""A test-only custom node folder that makes the running ComfyUI 0.3.75 behave, where the pack can tell, like the
newest ComfyUI as its source reads (issue: works in the ComfyUI users run today):

- model detection asks every entry of ``comfy.supported_models.models`` ``matches(unet_config, state_dict,
  unet_key_prefix=...)``, as the newest ``comfy/model_detection.py`` does (0.3.75 passes two arguments; here 0.3.75's
  ``model_config_from_unet`` calls the replacement with two, so the prefix is always "", which no entry reads);
- ``InterruptProcessingException`` derives from ``BaseException`` (0.3.75: ``Exception``), so an ``except Exception``
  no longer catches a cancel.

Both are read by ComfyUI at call time (``comfy.model_detection.model_config_from_unet_config`` is looked up through
the module, ``execution.py`` catches ``comfy.model_management.InterruptProcessingException``), so replacing them when
this folder is imported changes every later load and cancel of the server, core nodes' included.
"""

import logging

import comfy.model_detection
import comfy.model_management
import comfy.supported_models
import comfy.supported_models_base


def model_config_from_unet_config(unet_config, state_dict=None, unet_key_prefix=""):
    for model_config in comfy.supported_models.models:
        if model_config.matches(unet_config, state_dict, unet_key_prefix=unet_key_prefix):
            return model_config(unet_config)
    logging.error("no match %s", unet_config)
    return None


_base_matches = comfy.supported_models_base.BASE.matches.__func__


def base_matches(cls, unet_config, state_dict=None, unet_key_prefix=""):
    """Core's own entries take the prefix in the newest source; 0.3.75's base class ignores it."""
    return _base_matches(cls, unet_config, state_dict)


class InterruptProcessingException(BaseException):
    pass


comfy.supported_models_base.BASE.matches = classmethod(base_matches)
comfy.model_detection.model_config_from_unet_config = model_config_from_unet_config
comfy.model_management.InterruptProcessingException = InterruptProcessingException
logging.info("newest-ComfyUI shim: detection passes unet_key_prefix, interrupts are BaseExceptions")

NODE_CLASS_MAPPINGS = {}

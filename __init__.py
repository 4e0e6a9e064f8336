"""Aesthete: a ComfyUI node pack for the LoRA loop (aesthetic scoring, prompt order, LoRA training and loading).

ComfyUI imports this file; it stays light. The nodes are imported only when ComfyUI asks for them through
``comfy_entrypoint``; the domain packages (``scoring``, ``prompts``, ``lora``, ``training``) never import ComfyUI.
"""

__version__ = "0.2.0"

# frontend extensions (web/*.js), served by ComfyUI
WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes import AestheteExtension

    return AestheteExtension()

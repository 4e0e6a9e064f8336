"""The scoring area's names for the pack's one image rule (``common.images``): which files are images, how one is
opened, and how ComfyUI's IMAGE tensors become pixels. Kept so ``from .images import ...`` callers keep working."""

from ..common.images import (CAPTION_SUFFIXES, DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, OpenedImage, finite_mask,
                             list_images, open_image, tensor_to_uint8, to_rgb)

__all__ = ["CAPTION_SUFFIXES", "DEFAULT_MAX_PIXELS", "IMAGE_SUFFIXES", "OpenedImage", "finite_mask",
           "list_images", "open_image", "tensor_to_uint8", "to_rgb"]

"""Model factories for the tests, cached in tests/.models (git-ignored). Every model is random-weight and
built locally with the same classes and file layout as the real one: no hub is reachable here."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from . import REPO
from .comfy_server import COMFY_DIR

MODELS_CACHE = Path(os.environ.get("AESTHETE_TEST_MODELS", REPO / "tests" / ".models"))
# bump when a factory changes, so stale cached files are rebuilt
FACTORY_VERSION = "1"


def _cached(name: str) -> Path:
    MODELS_CACHE.mkdir(parents=True, exist_ok=True)
    return MODELS_CACHE / f"v{FACTORY_VERSION}-{name}"


def small_sd15_checkpoint() -> Path:
    """A random-weight SD1.5-format checkpoint (small UNet, full CLIP-L and VAE) detected by ComfyUI as SD15."""
    return _build("sd15-small", _cached("aesthete-test-sd15-small.safetensors"))


def _build(kind: str, path: Path) -> Path:
    """Run build_models.py for ``kind`` with the embedded ComfyUI's classes, unless ``path`` is cached."""
    if not path.exists():
        subprocess.run([sys.executable, str(Path(__file__).with_name("build_models.py")), kind, str(path)],
                       cwd=COMFY_DIR, check=True, env=dict(os.environ, PYTHONPATH=str(COMFY_DIR)))
    return path


def small_sdxl_unet() -> Path:
    """A random-weight UNet-only file (for UNETLoader) that ComfyUI detects as SDXL, with the full SDXL module layout
    but every level 320 wide (build_models.SMALL_SDXL_CONFIG)."""
    return _build("sdxl-small-unet", _cached("aesthete-test-sdxl-small-unet.safetensors"))


TINY_VISION_CONFIG = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                          image_size=32, patch_size=8, projection_dim=16)
# big enough that the server's memory shows whether a predictor was freed (about 150 MB), quick to run (64 px)
MEDIUM_VISION_CONFIG = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=3, num_attention_heads=8,
                            image_size=64, patch_size=16, projection_dim=256)
FULL_VISION_CONFIG = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                          image_size=224, patch_size=14, projection_dim=768)


def aesthetic_predictor(kind: str = "tiny", head: str = "v2-linear", seed: int = 0) -> Path:
    """A random-weight LAION aesthetic predictor folder in the hub layout: config.json, model.safetensors,
    preprocessor_config.json. ``kind`` is "tiny" (32 px), "medium" (about 150 MB, 64 px) or "full" (ViT-L/14, 224 px, the real cost)."""
    path = _cached(f"aesthetic-{kind}-{head}-s{seed}-h2")  # h2: V1 heads spread too
    if (path / "config.json").exists():
        return path
    import torch
    from aesthetics_predictor import AestheticsPredictorV1, AestheticsPredictorV2Linear, AestheticsPredictorV2ReLU
    from transformers import CLIPImageProcessor, CLIPVisionConfig

    classes = {"v1": AestheticsPredictorV1, "v2-linear": AestheticsPredictorV2Linear,
               "v2-relu": AestheticsPredictorV2ReLU}
    vision = {"tiny": TINY_VISION_CONFIG, "medium": MEDIUM_VISION_CONFIG, "full": FULL_VISION_CONFIG}[kind]
    torch.manual_seed(seed)
    model = classes[head](CLIPVisionConfig(**vision))
    with torch.no_grad():  # the heads start near zero; spread the scores so that images differ clearly
        if hasattr(model, "layers"):  # V2: an MLP or linear stack
            for p in model.layers.parameters():
                p.normal_(0.0, 0.5)
        else:  # V1: one linear layer on the embedding
            model.predictor.weight.normal_(0.0, 20.0)
            model.predictor.bias.fill_(5.0)
    size = vision["image_size"]
    processor = CLIPImageProcessor(
        do_resize=True, size={"shortest_edge": size}, resample=3, do_center_crop=True,
        crop_size={"height": size, "width": size}, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
        do_convert_rgb=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # parallel test runs may build at once
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    try:
        os.replace(tmp, path)
    except OSError:  # another run finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return path

"""Kolors loaders: a Kolors folder (either layout) as MODEL, CLIP and VAE, and the single files ComfyUI users keep
(a Kolors UNet in models/unet, a ChatGLM3 file in models/text_encoders). The model classes are in kolors_model.py;
reading folders, configs and weights is ``aesthete.kolors``."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import comfy.utils
import folder_paths
from comfy_api.latest import io

from ..kolors.folder import KolorsFolderError
from ..kolors.download import DEFAULT_NAME, ensure_kolors
from ..common.tensors import LazyWeights
from ..kolors.folder import (chatglm3_weights, chatglm_config_for_file, find_kolors_folder, find_tokenizer_for_file,
                             looks_like_kolors, read_json)
from ..kolors.ip_adapter import IPAdapterPlus, read_ip_adapter
from . import kolors_controlnet, kolors_ip_adapter, kolors_model

log = logging.getLogger("aesthete.kolors")

KOLORS_FOLDER = "kolors"
DEFAULT_KOLORS_DIR = os.path.join(folder_paths.models_dir, KOLORS_FOLDER)
DIFFUSERS_PREFIX = "diffusers/"
LLM_FOLDER = "LLM"  # where Kolors-MZ users keep chatglm3-fp16.safetensors
IPADAPTER_FOLDER = "ipadapter"  # where IP-Adapter users keep their files (ComfyUI_IPAdapter_plus's folder)
KolorsIPAdapter = io.Custom("KOLORS_IPADAPTER")
DTYPE_OPTIONS = ["auto", "fp16", "bf16", "fp32"]
KOLORS_DTYPE_OPTIONS = DTYPE_OPTIONS + [kolors_model.TE_FP8, *kolors_model.TE_QUANTIZED]
TE_DTYPE_OPTIONS = DTYPE_OPTIONS + [kolors_model.FP8, *kolors_model.QUANTIZED]
DEVICE_OPTIONS = ["default", "cpu", "gpu"]


def register() -> None:
    """Once, at start-up: models/kolors and models/LLM (plus what extra_model_paths.yaml adds under `kolors:` and
    `LLM:`), and Kolors in ComfyUI's model detection (so core loaders load a Kolors UNet file too)."""
    folder_paths.add_model_folder_path(KOLORS_FOLDER, DEFAULT_KOLORS_DIR)
    folder_paths.add_model_folder_path(LLM_FOLDER, os.path.join(folder_paths.models_dir, LLM_FOLDER))
    ipadapter_dir = os.path.join(folder_paths.models_dir, IPADAPTER_FOLDER)
    if ipadapter_dir not in folder_paths.folder_names_and_paths.get(IPADAPTER_FOLDER, ([], set()))[0]:
        folder_paths.add_model_folder_path(IPADAPTER_FOLDER, ipadapter_dir)
    kolors_model.register_model_config()


def _subfolders(kind: str) -> list[tuple[str, Path]]:
    found = []
    for base in folder_paths.get_folder_paths(kind):
        if os.path.isdir(base):
            for entry in sorted(os.listdir(base)):
                path = Path(base) / entry
                if not entry.startswith(".") and path.is_dir() and looks_like_kolors(path):
                    found.append((entry, path))
    return found


def kolors_choices() -> list[str]:
    """The Kolors folders under models/kolors and models/diffusers; "Kolors" (downloaded on first use) always."""
    names = [DEFAULT_NAME]
    names += [n for n, _ in _subfolders(KOLORS_FOLDER) if n not in names]
    names += [DIFFUSERS_PREFIX + n for n, _ in _subfolders("diffusers")]
    return names


def kolors_folder_path(name: str) -> Path:
    """The folder a listed name stands for; never one outside the model folders (only listed names resolve)."""
    kind, short = ("diffusers", name[len(DIFFUSERS_PREFIX):]) if name.startswith(DIFFUSERS_PREFIX) \
        else (KOLORS_FOLDER, name)
    for entry, path in _subfolders(kind):
        if entry == short:
            return path
    if name == DEFAULT_NAME:
        bar = comfy.utils.ProgressBar(1)
        return ensure_kolors(Path(DEFAULT_KOLORS_DIR), DEFAULT_NAME,
                             lambda done, total, what: bar.update_absolute(done, max(total, 1)))
    raise KolorsFolderError(f"models/{kind}/{short}: not a Kolors folder here; put a Kwai-Kolors/Kolors or "
                            f"Kolors-diffusers folder (unet/, vae/, scheduler/, text_encoder/) in models/kolors "
                            f"and pick it from the list")


DTYPE_TOOLTIP = ("Weight precision: auto = ComfyUI's choice for the device (fp32 on a CPU, fp16 on most GPUs); "
                 "fp16 and bf16 halve the memory")
DEVICE_TOOLTIP = ("Where ChatGLM3 (6B parameters, about 12.5 GB in fp16) encodes prompts: default = ComfyUI's text "
                  "encoder device (the GPU when there is one; it is offloaded after encoding), cpu = always on the "
                  "CPU (slow, keeps GPU memory free for the UNet), gpu = the GPU")


class AestheteKolorsLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AestheteKolorsLoader",
            display_name="Kolors Loader",
            category="Aesthete/kolors",
            description="Loads Kolors (Kwai-Kolors/Kolors or Kolors-diffusers folder) as an ordinary MODEL, CLIP "
                        "and VAE for core nodes: CLIPTextEncode (Chinese or English, 256 tokens), KSampler, LoRA "
                        "loaders, Train LoRA. 'Kolors' is downloaded into models/kolors on first use (ModelScope, "
                        "then Hugging Face).",
            inputs=[
                io.Combo.Input("kolors", options=kolors_choices(), default=DEFAULT_NAME,
                               tooltip="A folder under models/kolors or models/diffusers with unet/, vae/, "
                                       "scheduler/ and text_encoder/; 'Kolors' downloads Kwai-Kolors/Kolors if it "
                                       "is missing"),
                io.Combo.Input("dtype", options=KOLORS_DTYPE_OPTIONS, default="auto",
                               tooltip=DTYPE_TOOLTIP + "; 'auto, text encoder fp8' stores ChatGLM3 in fp8 (about 6.5 GB "
                                                       "instead of 12.5, for GPUs under 16 GB); '... q8_0' in 8 bits "
                                                       "(about 6.4 GB), '... q4_1' in 4 bits (about 3.9 GB, for 8-12 GB "
                                                       "GPUs), dequantized layer by layer, no compiled kernel"),
                io.Combo.Input("text_encoder_device", options=DEVICE_OPTIONS, default="default",
                               tooltip=DEVICE_TOOLTIP),
            ],
            outputs=[io.Model.Output("MODEL", tooltip="The Kolors UNet (SDXL family with a text projection)"),
                     io.Clip.Output("CLIP", tooltip="ChatGLM3: context 256 x 4096, pooled 4096"),
                     io.Vae.Output("VAE", tooltip="The SDXL VAE Kolors ships")],
        )

    @classmethod
    def execute(cls, kolors, dtype, text_encoder_device) -> io.NodeOutput:
        folder = find_kolors_folder(kolors_folder_path(kolors), prefer_fp16=dtype != "fp32")
        model, clip, vae = kolors_model.load_kolors_folder(folder, dtype, text_encoder_device)
        return io.NodeOutput(model, clip, vae)


class AestheteKolorsUNetLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AestheteKolorsUNetLoader",
            display_name="Kolors UNet Loader (single file)",
            category="Aesthete/kolors",
            description="Loads a Kolors UNet kept as one file in models/unet or models/diffusion_models: diffusers "
                        "names (the repository's diffusion_pytorch_model.safetensors, with its config.json beside "
                        "it or the stock Kolors config) or ComfyUI names (as ModelSave writes it; core Load "
                        "Diffusion Model loads those too). Kolors-Inpainting's UNet (9 input channels) is found by "
                        "its channels and works with core InpaintModelConditioning and VAEEncodeForInpaint.",
            inputs=[
                io.Combo.Input("unet_name", options=folder_paths.get_filename_list("diffusion_models"),
                               tooltip="The UNet file"),
                io.Combo.Input("dtype", options=DTYPE_OPTIONS, default="auto", tooltip=DTYPE_TOOLTIP),
            ],
            outputs=[io.Model.Output("MODEL", tooltip="The Kolors UNet")],
        )

    @classmethod
    def execute(cls, unet_name, dtype) -> io.NodeOutput:
        path = Path(folder_paths.get_full_path_or_raise("diffusion_models", unet_name))
        sd = LazyWeights([path])  # each tensor read as it is copied into the model
        if any(k.endswith(kolors_model.ENCODER_HID_KEY) and "diffusion_model" in k for k in sd) or \
                "input_blocks.0.0.weight" in sd:
            model = comfy_detected_unet({k: sd.take(k) for k in list(sd)}, dtype, path)  # ComfyUI's loader
        else:
            config_path = path.parent / "config.json"
            if config_path.is_file():
                config = read_json(config_path)
            else:  # the stock Kolors config, with the file's input channels (Kolors-Inpainting's UNet takes 9)
                config = read_json(STOCK_UNET_CONFIG)
                if "conv_in.weight" in sd:
                    config["in_channels"] = sd["conv_in.weight"].shape[1]
            model = kolors_model.kolors_unet_from_diffusers(sd, config, None, dtype, where=str(path))
        return io.NodeOutput(model)


STOCK_UNET_CONFIG = Path(__file__).resolve().parents[1] / "kolors" / "kolors_unet_config.json"


def comfy_detected_unet(sd, dtype, path: Path):
    import comfy.sd

    options = {} if dtype == "auto" else {"dtype": kolors_model.DTYPES[dtype]}
    model = comfy.sd.load_diffusion_model_state_dict(sd, model_options=options)
    if model is None or not isinstance(model.model, kolors_model.Kolors):
        raise KolorsFolderError(f"{path}: not a Kolors UNet (no encoder_hid_proj); load it with core Load "
                                f"Diffusion Model")
    return model


def text_encoder_choices() -> list[str]:
    names = folder_paths.get_filename_list("text_encoders")
    return names + [f"{LLM_FOLDER}/{n}" for n in folder_paths.get_filename_list(LLM_FOLDER) if n not in names]


def text_encoder_path(name: str) -> Path:
    if name.startswith(LLM_FOLDER + "/") and name not in folder_paths.get_filename_list("text_encoders"):
        return Path(folder_paths.get_full_path_or_raise(LLM_FOLDER, name[len(LLM_FOLDER) + 1:]))
    return Path(folder_paths.get_full_path_or_raise("text_encoders", name))


class AestheteChatGLM3Loader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AestheteChatGLM3Loader",
            display_name="Kolors Text Encoder Loader (ChatGLM3 file)",
            category="Aesthete/kolors",
            description="Loads Kolors's ChatGLM3 text encoder kept as one file (for example chatglm3-fp16.safetensors "
                        "in models/text_encoders or models/LLM) as a CLIP. Its tokenizer.model is taken from beside "
                        "the file or from a Kolors folder in models/kolors. The q8_0 and q4_1 choices quantize the fp16 "
                        "file to 8 or 4 bits while it loads. A ChatGLM3 GGUF file (llama.cpp's, in models/LLM: Q8_0, "
                        "Q4_K_M, F16, ...) is read with the gguf package and stored as the dtype says (q8_0 keeps a "
                        "Q8_0 file's numbers); other quantized (4/8-bit) files are refused.",
            inputs=[
                io.Combo.Input("text_encoder", options=text_encoder_choices(),
                               tooltip="The ChatGLM3 weights (safetensors; .bin is read with weights_only; a "
                                       "ChatGLM3 .gguf in models/LLM)"),
                io.Combo.Input("dtype", options=TE_DTYPE_OPTIONS, default="auto",
                               tooltip=DTYPE_TOOLTIP + "; fp8_e4m3fn stores the weights in fp8 (about half of fp16) "
                                                       "and computes in fp16 (fp32 on a CPU); q8_0 and q4_1 store "
                                                       "them in blocks of 8 or 4 bits (about 6.4 and 3.9 GB), "
                                                       "quantized from the fp16 file as it loads"),
                io.Combo.Input("device", options=DEVICE_OPTIONS, default="default", tooltip=DEVICE_TOOLTIP),
            ],
            outputs=[io.Clip.Output("CLIP", tooltip="ChatGLM3 for CLIPTextEncode: context 256 x hidden, pooled")],
        )

    @classmethod
    def execute(cls, text_encoder, dtype, device) -> io.NodeOutput:
        path = text_encoder_path(text_encoder)
        sd = chatglm3_weights([path])  # shapes now, each tensor read as it is copied into the model
        config = chatglm_config_for_file(path, sd)
        tokenizer = find_tokenizer_for_file(path, [p for _, p in _subfolders(KOLORS_FOLDER)])
        return io.NodeOutput(kolors_model.kolors_clip([path], config, tokenizer, dtype, device, state_dict=sd))


class AestheteKolorsControlNetLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AestheteKolorsControlNetLoader",
            display_name="Kolors ControlNet Loader",
            category="Aesthete/kolors",
            description="Loads a Kolors ControlNet (Kwai-Kolors's Kolors-ControlNet-Canny, -Depth or -Pose: "
                        "diffusion_pytorch_model.safetensors with its config.json, in a folder of its own under "
                        "models/controlnet) as a core CONTROL_NET. Use it with core Apply ControlNet (strength, "
                        "start/end percent) on prompts encoded by the Kolors CLIP and the Kolors MODEL. The hint is "
                        "an image: core Canny for the canny model, a depth map or a pose picture for the others.",
            inputs=[
                io.Combo.Input("control_net_name", options=folder_paths.get_filename_list("controlnet"),
                               tooltip="The ControlNet's weights in models/controlnet (for example "
                                       "Kolors-ControlNet-Canny/diffusion_pytorch_model.safetensors); its config.json "
                                       "is read from beside it, or Kolors's own when there is none"),
                io.Combo.Input("dtype", options=DTYPE_OPTIONS, default="auto", tooltip=DTYPE_TOOLTIP),
            ],
            outputs=[io.ControlNet.Output("CONTROL_NET", tooltip="For core Apply ControlNet on the Kolors MODEL")],
        )

    @classmethod
    def execute(cls, control_net_name, dtype) -> io.NodeOutput:
        path = Path(folder_paths.get_full_path_or_raise("controlnet", control_net_name))
        weights = LazyWeights([path])  # each tensor read as it is copied into the model
        config_path = kolors_controlnet.controlnet_config_path(path)
        config = read_json(config_path) if config_path else read_json(STOCK_UNET_CONFIG)
        return io.NodeOutput(kolors_controlnet.kolors_controlnet(weights, config, dtype, where=str(path),
                                                                 take=weights.take))


class AestheteKolorsIPAdapterLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AestheteKolorsIPAdapterLoader",
            display_name="Kolors IP-Adapter Loader",
            category="Aesthete/kolors",
            description="Loads Kolors-IP-Adapter-Plus (ip_adapter_plus_general.bin, in models/ipadapter). Its image "
                        "encoder (Kolors-IP-Adapter-Plus/image_encoder, CLIP ViT-L/14-336) loads with core Load CLIP "
                        "Vision from models/clip_vision; apply both with Kolors IP-Adapter.",
            inputs=[io.Combo.Input("ipadapter_name", options=folder_paths.get_filename_list(IPADAPTER_FOLDER),
                                   tooltip="The IP-Adapter file (.bin as published, or .safetensors)")],
            outputs=[KolorsIPAdapter.Output("IPADAPTER", display_name="ipadapter", tooltip="For Kolors IP-Adapter")],
        )

    @classmethod
    def execute(cls, ipadapter_name) -> io.NodeOutput:
        path = Path(folder_paths.get_full_path_or_raise(IPADAPTER_FOLDER, ipadapter_name))
        adapter = IPAdapterPlus(read_ip_adapter(path), where=str(path)).eval()
        return io.NodeOutput(kolors_ip_adapter.ip_adapter_patcher(adapter))


class AestheteKolorsIPAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AestheteKolorsIPAdapter",
            display_name="Kolors IP-Adapter",
            category="Aesthete/kolors",
            description="Applies Kolors-IP-Adapter-Plus to the Kolors MODEL: the reference image, read by its image "
                        "encoder, steers every cross-attention with the given weight (as diffusers' KolorsPipeline "
                        "with ip_adapter_image). Sample the returned MODEL with core KSampler.",
            inputs=[
                io.Model.Input("model", tooltip="The Kolors MODEL (Kolors Loader or Kolors UNet Loader)"),
                KolorsIPAdapter.Input("ipadapter", tooltip="From Kolors IP-Adapter Loader"),
                io.ClipVision.Input("clip_vision", tooltip="The IP-Adapter's image encoder (core Load CLIP Vision: "
                                                           "Kolors-IP-Adapter-Plus/image_encoder, CLIP ViT-L/14-336)"),
                io.Image.Input("image", tooltip="The reference image (several: their tokens are joined)"),
                io.Float.Input("weight", default=0.5, min=-1.0, max=3.0, step=0.05,
                               tooltip="How strongly the image steers (diffusers' ip_adapter_scale; Kwai-Kolors's "
                                       "samples use 0.3-0.5)"),
            ],
            outputs=[io.Model.Output("MODEL", tooltip="The Kolors MODEL with the IP-Adapter applied")],
        )

    @classmethod
    def execute(cls, model, ipadapter, clip_vision, image, weight) -> io.NodeOutput:
        return io.NodeOutput(kolors_ip_adapter.apply_ip_adapter(model, ipadapter, clip_vision, image, weight))


NODES = [AestheteKolorsLoader, AestheteKolorsUNetLoader, AestheteChatGLM3Loader, AestheteKolorsControlNetLoader,
         AestheteKolorsIPAdapterLoader, AestheteKolorsIPAdapter]

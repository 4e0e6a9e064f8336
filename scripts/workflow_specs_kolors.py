"""The specs of the Kolors add-on example workflows (7-10: img2img, inpainting, ControlNet, IP-Adapter), built from
the parts in workflow_specs.py."""

from __future__ import annotations

from devkit.workflow_builder import Group, WorkflowSpec

from .workflow_specs import COLORS, KOLORS, KOLORS_CFG, KOLORS_FILES, Builder, note, sampler

KOLORS_INPAINTING_UNET = "Kolors-Inpainting/diffusion_pytorch_model.safetensors"
KOLORS_CONTROLNET = "Kolors-ControlNet-Canny/diffusion_pytorch_model.safetensors"
KOLORS_IP_ADAPTER = "ip_adapter_plus_general.bin"
KOLORS_IMAGE_ENCODER = "Kolors-IP-Adapter-Plus-image_encoder.safetensors"
INPUT_IMAGE = "example.png"
ADDON_PROMPT = "一只可爱的小猫坐在窗台上，阳光，油画风格，细节丰富"
ADDON_NEGATIVE = "低质量，模糊，变形"


def kolors_addon_start(b: Builder, title: str, text: str, image_title: str = "Your picture · 你的图片") -> None:
    """Note, Kolors Loader, a LoadImage and the two prompts of the Kolors add-on workflows (7-10)."""
    note(b, title, f"{KOLORS_FILES}\n{text}")
    b.add("kolors", "AestheteKolorsLoader", {"kolors": KOLORS, "dtype": "auto", "text_encoder_device": "default"})
    b.add("image", "LoadImage", {"image": INPUT_IMAGE}, title=image_title)
    b.add("positive_text", "CLIPTextEncode", {"text": ADDON_PROMPT}, title="Positive")
    b.add("negative_text", "CLIPTextEncode", {"text": ADDON_NEGATIVE}, title="Negative")
    b.link("kolors", "CLIP", "positive_text", "clip")
    b.link("kolors", "CLIP", "negative_text", "clip")


def kolors_addon_end(b: Builder, prefix: str) -> None:
    b.add("decode", "VAEDecode")
    b.link("sampler", 0, "decode", "samples")
    b.link("kolors", "VAE", "decode", "vae")
    b.add("save", "SaveImage", {"filename_prefix": prefix})
    b.link("decode", 0, "save", "images")


def kolors_img2img() -> WorkflowSpec:
    b = Builder("7-kolors-img2img")
    kolors_addon_start(b, "Aesthete 7 · Kolors img2img (Kolors 图生图)", (
        f"• input/{INPUT_IMAGE} : your picture (Load Image's upload button)\n\n"
        "Core VAE Encode turns the picture into a latent; KSampler redraws it from denoise 0.6 (lower keeps more of the "
        "picture). Same numbers as diffusers' KolorsImg2ImgPipeline.\n"
        "用 VAE Encode 把图片编码为潜空间，KSampler 以 denoise 0.6 重绘（越低越接近原图）。"))
    b.add("encode", "VAEEncode")
    b.link("image", 0, "encode", "pixels")
    b.link("kolors", "VAE", "encode", "vae")
    sampler(b, "sampler", ("kolors", "MODEL"), "encode", cfg=KOLORS_CFG)
    b.nodes[-1].widgets["denoise"] = 0.6
    kolors_addon_end(b, "Aesthete/kolors_img2img")
    groups = [Group("Kolors, picture · 模型与图片", ["kolors", "image"], COLORS["models"]),
              Group("Prompt · 提示词", ["positive_text", "negative_text"], COLORS["prompt"]),
              Group("Redraw · 重绘", ["encode", "sampler", "decode", "save"], COLORS["generate"])]
    columns = [["note", 120, "kolors", "image"], ["positive_text", "negative_text"], ["encode", "sampler"],
               ["decode", "save"]]
    return b.spec(columns, groups)


def kolors_inpainting() -> WorkflowSpec:
    b = Builder("8-kolors-inpainting")
    kolors_addon_start(b, "Aesthete 8 · Kolors inpainting (Kolors 局部重绘)", (
        f"• models/unet/{KOLORS_INPAINTING_UNET} : the UNet of Kwai-Kolors/Kolors-Inpainting (unet/ of that "
        "repository, its config.json beside it); the Kolors Loader above gives the text encoder and VAE\n"
        f"• input/{INPUT_IMAGE} : your picture; paint the part to redraw in the mask editor (right click, Open in "
        "MaskEditor)\n\n"
        "Core InpaintModelConditioning gives the 9-channel inpainting UNet the mask and the masked picture, as "
        "Kwai-Kolors's inpainting pipeline does.\n"
        "把 Kolors-Inpainting 的 unet 放进 models/unet；在遮罩编辑器里涂出要重绘的部分。"),
        image_title="Your picture, masked · 你的图片（带遮罩）")
    b.add("unet", "AestheteKolorsUNetLoader", {"unet_name": KOLORS_INPAINTING_UNET, "dtype": "auto"},
          title="Kolors-Inpainting UNet")
    b.add("inpaint", "InpaintModelConditioning", {"noise_mask": True})
    b.link("positive_text", 0, "inpaint", "positive")
    b.link("negative_text", 0, "inpaint", "negative")
    b.link("kolors", "VAE", "inpaint", "vae")
    b.link("image", 0, "inpaint", "pixels")
    b.link("image", 1, "inpaint", "mask")
    sampler(b, "sampler", ("unet", 0), ("inpaint", 2), cfg=KOLORS_CFG, positive=("inpaint", 0),
            negative=("inpaint", 1))
    kolors_addon_end(b, "Aesthete/kolors_inpainting")
    groups = [Group("Kolors, inpainting UNet, picture · 模型与图片", ["kolors", "unet", "image"], COLORS["models"]),
              Group("Prompt · 提示词", ["positive_text", "negative_text"], COLORS["prompt"]),
              Group("Inpaint · 局部重绘", ["inpaint", "sampler", "decode", "save"], COLORS["generate"])]
    columns = [["note", 120, "kolors", "unet", "image"], ["positive_text", "negative_text"], ["inpaint", "sampler"],
               ["decode", "save"]]
    return b.spec(columns, groups)


def kolors_controlnet() -> WorkflowSpec:
    b = Builder("9-kolors-controlnet-canny")
    kolors_addon_start(b, "Aesthete 9 · Kolors ControlNet, canny (Kolors ControlNet 边缘控制)", (
        f"• models/controlnet/{KOLORS_CONTROLNET} : Kwai-Kolors/Kolors-ControlNet-Canny (its config.json beside it; "
        "-Depth and -Pose load the same way with a depth map or a pose picture)\n"
        f"• input/{INPUT_IMAGE} : the picture whose edges guide the drawing\n\n"
        "Core Canny draws the edges; core Apply ControlNet applies them with a strength and a start/end percent.\n"
        "自带的 Canny 提取边缘，Apply ControlNet 按强度和起止百分比施加控制。"), image_title="Edges from · 边缘来源")
    b.add("canny", "Canny", {"low_threshold": 0.4, "high_threshold": 0.8})
    b.link("image", 0, "canny", "image")
    b.add("controlnet", "AestheteKolorsControlNetLoader", {"control_net_name": KOLORS_CONTROLNET, "dtype": "auto"})
    b.add("apply", "ControlNetApplyAdvanced", {"strength": 0.7, "start_percent": 0.0, "end_percent": 0.9})
    b.link("positive_text", 0, "apply", "positive")
    b.link("negative_text", 0, "apply", "negative")
    b.link("controlnet", 0, "apply", "control_net")
    b.link("canny", 0, "apply", "image")
    b.add("latent", "EmptyLatentImage", {"width": 1024, "height": 1024, "batch_size": 1})
    sampler(b, "sampler", ("kolors", "MODEL"), "latent", cfg=KOLORS_CFG, positive=("apply", 0),
            negative=("apply", 1))
    kolors_addon_end(b, "Aesthete/kolors_controlnet")
    groups = [Group("Kolors, ControlNet · 模型", ["kolors", "controlnet"], COLORS["models"]),
              Group("Edges · 边缘", ["image", "canny"], COLORS["compare"]),
              Group("Prompt, control · 提示词与控制", ["positive_text", "negative_text", "apply"], COLORS["prompt"]),
              Group("Generate · 生成", ["latent", "sampler", "decode", "save"], COLORS["generate"])]
    columns = [["note", 120, "kolors", "controlnet"], ["image", "canny"], ["positive_text", "negative_text", "apply"],
               ["latent", "sampler"], ["decode", "save"]]
    return b.spec(columns, groups)


def kolors_ip_adapter() -> WorkflowSpec:
    b = Builder("10-kolors-ip-adapter")
    kolors_addon_start(b, "Aesthete 10 · Kolors IP-Adapter Plus (Kolors 参考图)", (
        f"• models/ipadapter/{KOLORS_IP_ADAPTER} : Kwai-Kolors/Kolors-IP-Adapter-Plus\n"
        f"• models/clip_vision/{KOLORS_IMAGE_ENCODER} : that repository's image_encoder/model.safetensors (CLIP "
        "ViT-L/14-336), renamed\n"
        f"• input/{INPUT_IMAGE} : the reference picture\n\n"
        "Kolors IP-Adapter steers every cross-attention of the Kolors MODEL with the picture (weight 0.5).\n"
        "参考图经图像编码器读取后，以权重 0.5 引导 Kolors 的生成。"), image_title="Reference · 参考图")
    b.add("ipadapter", "AestheteKolorsIPAdapterLoader", {"ipadapter_name": KOLORS_IP_ADAPTER})
    b.add("clip_vision", "CLIPVisionLoader", {"clip_name": KOLORS_IMAGE_ENCODER})
    b.add("apply", "AestheteKolorsIPAdapter", {"weight": 0.5})
    b.link("kolors", "MODEL", "apply", "model")
    b.link("ipadapter", 0, "apply", "ipadapter")
    b.link("clip_vision", 0, "apply", "clip_vision")
    b.link("image", 0, "apply", "image")
    b.add("latent", "EmptyLatentImage", {"width": 1024, "height": 1024, "batch_size": 1})
    sampler(b, "sampler", ("apply", 0), "latent", cfg=KOLORS_CFG)
    kolors_addon_end(b, "Aesthete/kolors_ip_adapter")
    groups = [Group("Kolors, IP-Adapter · 模型", ["kolors", "ipadapter", "clip_vision"], COLORS["models"]),
              Group("Reference · 参考图", ["image", "apply"], COLORS["compare"]),
              Group("Prompt · 提示词", ["positive_text", "negative_text"], COLORS["prompt"]),
              Group("Generate · 生成", ["latent", "sampler", "decode", "save"], COLORS["generate"])]
    columns = [["note", 120, "kolors", "ipadapter", "clip_vision"], ["image", "apply"],
               ["positive_text", "negative_text"], ["latent", "sampler"], ["decode", "save"]]
    return b.spec(columns, groups)

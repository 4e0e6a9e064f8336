"""Module names of the standard SD1.5 and SDXL UNets in the three namings LoRA files use.

- ``ldm``: the original Stable Diffusion / ComfyUI naming (``input_blocks.4.1.transformer_blocks.0.attn1.to_q``);
  ComfyUI's MODEL holds these under ``diffusion_model.``.
- ``diffusers``: ``down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q`` (diffusers, peft, DiffSynth 2.x).
- ``diffsynth``: DiffSynth-Studio 1.x's flat block list, ``blocks.7.transformer_blocks.0.attn1.to_q``, with
  ``to_out`` (no ``.0``), ``act_fn.proj`` and ``ff`` for the feed-forward, ``norm1/conv1/time_emb_proj`` in resnets.
  Kolors uses the SDXL layout plus its text projection, ``text_intermediate_proj`` in DiffSynth 1.x and
  ``encoder_hid_proj`` in diffusers and in ComfyUI's Kolors UNet.

Only weight-bearing modules are listed. The tables are computed from the architecture (levels, res blocks,
transformer depths) by walking the UNet the way each library builds it, so both bases come from one walk.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class UNetArchitecture:
    name: str
    num_res_blocks: int
    # transformer blocks per attention at each level (0: that level has no attention)
    level_depth: tuple[int, ...]
    middle_depth: int
    size_embedding: bool = False  # SDXL's label_emb (add_embedding in diffusers)


ARCHITECTURES = {
    "sd15": UNetArchitecture("sd15", num_res_blocks=2, level_depth=(1, 1, 1, 0), middle_depth=1),
    "sdxl": UNetArchitecture("sdxl", num_res_blocks=2, level_depth=(0, 2, 10), middle_depth=10,
                             size_embedding=True),
}
BASES = tuple(ARCHITECTURES)


def architecture_from_unet_config(config: dict, name: str = "custom") -> UNetArchitecture:
    """The architecture of a UNet from ComfyUI's ``unet_config`` (``num_res_blocks``, ``transformer_depth`` per
    input block, ``transformer_depth_middle``, ``channel_mult``), for UNets that are not the standard SD1.5/SDXL
    (a smaller Kolors or SDXL). Levels must keep one depth for all their blocks, as every UNet these tools load."""
    levels = len(config["channel_mult"])
    res = config["num_res_blocks"]
    res = res[0] if isinstance(res, (list, tuple)) else int(res)
    depth = list(config.get("transformer_depth") or [0] * (levels * res))
    level_depth = tuple(int(depth[level * res]) if level * res < len(depth) else 0 for level in range(levels))
    middle = config.get("transformer_depth_middle")
    middle = level_depth[-1] if middle is None or middle < 0 else int(middle)
    return UNetArchitecture(name, num_res_blocks=res, level_depth=level_depth, middle_depth=middle,
                            size_embedding=bool(config.get("adm_in_channels")))


def architecture(base: str | UNetArchitecture) -> UNetArchitecture:
    if isinstance(base, UNetArchitecture):
        return base
    if base not in ARCHITECTURES:
        raise ValueError(f"unknown base {base!r}: use one of {', '.join(BASES)}")
    return ARCHITECTURES[base]
# (ldm and diffusers name, DiffSynth 1.x name) of the Linear 4096->2048 on Kolors' ChatGLM text features
KOLORS_TEXT_PROJECTION = ("encoder_hid_proj", "text_intermediate_proj")

# ldm sub-module -> (diffusers, diffsynth) inside one resnet
_RESNET_PARTS = {
    "in_layers.0": ("norm1", "norm1"),
    "in_layers.2": ("conv1", "conv1"),
    "emb_layers.1": ("time_emb_proj", "time_emb_proj"),
    "out_layers.0": ("norm2", "norm2"),
    "out_layers.3": ("conv2", "conv2"),
    "skip_connection": ("conv_shortcut", "conv_shortcut"),
}
_ATTENTION_PARTS = {"norm": "norm", "proj_in": "proj_in", "proj_out": "proj_out"}
_TRANSFORMER_PARTS = {"norm1": "norm1", "norm2": "norm2", "norm3": "norm3", "ff.net.0.proj": "act_fn.proj",
                      "ff.net.2": "ff"}
for _attn in ("attn1", "attn2"):
    for _proj in ("to_q", "to_k", "to_v"):
        _TRANSFORMER_PARTS[f"{_attn}.{_proj}"] = f"{_attn}.{_proj}"
    _TRANSFORMER_PARTS[f"{_attn}.to_out.0"] = f"{_attn}.to_out"


@dataclass(frozen=True)
class ModuleName:
    ldm: str
    diffusers: str
    diffsynth: str


class _Walk:
    """Collects ModuleName rows while walking the UNet; ``block`` counts DiffSynth's flat block list."""

    def __init__(self) -> None:
        self.rows: list[ModuleName] = []
        self.block = 0

    def add(self, ldm: str, diffusers: str, diffsynth: str) -> None:
        self.rows.append(ModuleName(ldm, diffusers, diffsynth))

    def resnet(self, ldm: str, diffusers: str) -> None:
        for part, (d_part, s_part) in _RESNET_PARTS.items():
            self.add(f"{ldm}.{part}", f"{diffusers}.{d_part}", f"blocks.{self.block}.{s_part}")
        self.block += 1

    def attention(self, ldm: str, diffusers: str, depth: int) -> None:
        for part, s_part in _ATTENTION_PARTS.items():
            self.add(f"{ldm}.{part}", f"{diffusers}.{part}", f"blocks.{self.block}.{s_part}")
        for t in range(depth):
            for part, s_part in _TRANSFORMER_PARTS.items():
                self.add(f"{ldm}.transformer_blocks.{t}.{part}", f"{diffusers}.transformer_blocks.{t}.{part}",
                         f"blocks.{self.block}.transformer_blocks.{t}.{s_part}")
        self.block += 1

    def sampler(self, ldm: str, diffusers: str) -> None:
        self.add(ldm, diffusers, f"blocks.{self.block}.conv")
        self.block += 1

    def push_or_pop(self) -> None:
        self.block += 1


@lru_cache(maxsize=None)
def module_names(base: str | UNetArchitecture) -> tuple[ModuleName, ...]:
    """Every weight-bearing UNet module of ``base`` ("sd15", "sdxl" or an architecture) in the three namings."""
    arch = architecture(base)
    walk = _Walk()
    walk.add("input_blocks.0.0", "conv_in", "conv_in")
    walk.add("time_embed.0", "time_embedding.linear_1", "time_embedding.0")
    walk.add("time_embed.2", "time_embedding.linear_2", "time_embedding.2")
    if arch.size_embedding:
        walk.add("label_emb.0.0", "add_embedding.linear_1", "add_time_embedding.0")
        walk.add("label_emb.0.2", "add_embedding.linear_2", "add_time_embedding.2")
    walk.add("out.0", "conv_norm_out", "conv_norm_out")
    walk.add("out.2", "conv_out", "conv_out")

    levels = len(arch.level_depth)
    n = 1  # ldm input block index; 0 is conv_in
    for level, depth in enumerate(arch.level_depth):
        for i in range(arch.num_res_blocks):
            walk.resnet(f"input_blocks.{n}.0", f"down_blocks.{level}.resnets.{i}")
            if depth:
                walk.attention(f"input_blocks.{n}.1", f"down_blocks.{level}.attentions.{i}", depth)
            walk.push_or_pop()
            n += 1
        if level < levels - 1:
            walk.sampler(f"input_blocks.{n}.0.op", f"down_blocks.{level}.downsamplers.0.conv")
            walk.push_or_pop()
            n += 1

    walk.resnet("middle_block.0", "mid_block.resnets.0")
    walk.attention("middle_block.1", "mid_block.attentions.0", arch.middle_depth)
    walk.resnet("middle_block.2", "mid_block.resnets.1")

    n = 0
    for up, depth in enumerate(reversed(arch.level_depth)):
        for i in range(arch.num_res_blocks + 1):
            walk.push_or_pop()
            walk.resnet(f"output_blocks.{n}.0", f"up_blocks.{up}.resnets.{i}")
            if depth:
                walk.attention(f"output_blocks.{n}.1", f"up_blocks.{up}.attentions.{i}", depth)
            if i == arch.num_res_blocks and up < levels - 1:
                walk.sampler(f"output_blocks.{n}.{2 if depth else 1}.conv", f"up_blocks.{up}.upsamplers.0.conv")
            n += 1
    return tuple(walk.rows)


@lru_cache(maxsize=None)
def name_tables(base: str) -> dict[str, dict[str, str]]:
    """Lookups for DiffSynth 1.x names: {"ldm": {ldm: ldm}, "diffsynth": {DiffSynth name: ldm name},
    "ldm_to_diffsynth": the other way}. Every other naming is placed by a key map (``standard_key_map`` here,
    the loaded model's own in ComfyUI)."""
    tables: dict[str, dict[str, str]] = {"ldm": {}, "diffsynth": {}, "ldm_to_diffsynth": {}}
    for row in module_names(base):
        tables["ldm"][row.ldm] = row.ldm
        tables["diffsynth"][row.diffsynth] = row.ldm
        tables["ldm_to_diffsynth"][row.ldm] = row.diffsynth
    if base == "sdxl":  # Kolors: the text projection has the same name in ldm and diffusers layouts
        tables["diffsynth"][KOLORS_TEXT_PROJECTION[1]] = KOLORS_TEXT_PROJECTION[0]
        tables["ldm_to_diffsynth"][KOLORS_TEXT_PROJECTION[0]] = KOLORS_TEXT_PROJECTION[1]
    return tables


@lru_cache(maxsize=None)
def diffusers_names(base: str | UNetArchitecture) -> dict[str, str]:
    """{ldm module: diffusers module} of ``base`` (Kolors' text projection included: the same name in both)."""
    names = {row.ldm: row.diffusers for row in module_names(base)}
    names[KOLORS_TEXT_PROJECTION[0]] = KOLORS_TEXT_PROJECTION[0]
    return names


@lru_cache(maxsize=None)
def standard_key_map(base: str | UNetArchitecture, kolors: bool = False) -> dict[str, str]:
    """The LoRA key map ComfyUI builds for a standard ``base`` UNet (``comfy.lora.model_lora_keys_unet``: module
    names in ComfyUI's, kohya's and diffusers' spellings -> ``diffusion_model.<ldm>.weight``), for use without
    ComfyUI (the command line); ``kolors`` adds Kolors' text projection. In ComfyUI, the loaded model's own map
    is used instead: it follows that model's layout."""
    key_map: dict[str, str] = {}
    rows = list(module_names(base))
    if kolors:
        ldm, diffsynth = KOLORS_TEXT_PROJECTION
        rows.append(ModuleName(ldm=ldm, diffusers=ldm, diffsynth=diffsynth))
    for row in rows:
        weight = f"diffusion_model.{row.ldm}.weight"
        key_map[f"lora_unet_{row.ldm.replace('.', '_')}"] = weight
        key_map[f"diffusion_model.{row.ldm}"] = weight
        diffusers = row.diffusers.replace(".", "_")
        key_map[f"lora_unet_{diffusers}"] = weight
        key_map[f"lycoris_{diffusers}"] = weight
        processor = row.diffusers.replace(".to_", ".processor.to_")
        processor = processor.removesuffix(".0") if processor.endswith(".to_out.0") else processor
        for prefix in ("", "unet."):
            key_map[prefix + processor] = weight
    return key_map

"""LoRA formats without ComfyUI: naming tables against DiffSynth's own converters, the DiffSynth 1.x Kolors key
list, every format placed on the same modules with the same update, alpha rules, conversions both ways."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from aesthete.lora import layout
from aesthete.lora.convert import LoraConversionError, convert_lora, convert_lora_with_report
from aesthete.lora.fitting import loader_tensors, restrict_to_model, unread_tensors, update_numel
from aesthete.lora.formats import parse_lora
from harness.lora_models import CONV_KINDS, KINDS, lycoris_layer

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "diffsynth"


def _strip_param(name: str) -> str:
    return name.rsplit(".", 1)[0]


@pytest.mark.parametrize("base", ["sdxl", "sd15"])
def test_diffsynth_names_match_diffsynths_own_converter(base):
    # unet_names.json: ldm -> DiffSynth parameter names, produced by DiffSynth's from_civitai converter
    table = json.loads((FIXTURES / "unet_names.json").read_text())[base]
    ours = layout.name_tables(base)["diffsynth"]
    modules = {_strip_param(ldm): _strip_param(ds) for ldm, ds in table.items()}
    assert len(modules) > 300
    wrong = {ds: (ldm, ours.get(ds)) for ldm, ds in modules.items() if ours.get(ds) != ldm}
    assert not wrong, f"{len(wrong)} names differ, e.g. {list(wrong.items())[:5]}"
    # and the other way round: no module of ours that DiffSynth's converter does not know
    ldm_modules = set(modules)
    extra = [r.ldm for r in layout.module_names(base) if r.ldm not in ldm_modules and "skip_connection" not in r.ldm]
    assert not extra, extra[:10]


def _kolors_state_dict(scale: float = 0.01) -> dict[str, torch.Tensor]:
    spec = json.loads((FIXTURES / "kolors_lora_keys.json").read_text())
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(*shape, generator=g) * scale for k, shape in spec["keys"].items()}


@pytest.fixture(scope="module")
def kolors_sd():
    return _kolors_state_dict()


def test_kolors_key_list_is_placed_completely(kolors_sd):
    assert len(kolors_sd) == 1120
    parsed = parse_lora(kolors_sd)
    assert parsed.format == "diffsynth" and parsed.base == "sdxl"
    assert parsed.unplaced == {}
    assert len(parsed.layers) == 560
    sdxl_modules = set(layout.name_tables("sdxl")["ldm"])
    targets = {layer.target[len("diffusion_model."):] for layer in parsed.layers}
    assert targets <= sdxl_modules and len(targets) == 560
    # the 70 SDXL transformer blocks x 2 attentions x 4 projections
    assert sum(".attn1.to_out.0" in t for t in targets) == 70


def test_kolors_roundtrip_diffsynth_comfyui_diffsynth(kolors_sd):
    comfy, meta = convert_lora(kolors_sd, to="comfyui")
    assert len(comfy) == 1680 and sum(k.endswith(".alpha") for k in comfy) == 560
    assert meta["aesthete.alpha"] == "4" and meta["aesthete.alpha_source"] == "diffsynth-recipe"
    assert meta["aesthete.rank"] == "16" and meta["aesthete.base"] == "sdxl"
    assert all(isinstance(v, str) for v in meta.values())
    back, meta_back = convert_lora(comfy, to="diffsynth")
    assert set(back) == set(kolors_sd)
    for key, value in kolors_sd.items():
        assert torch.equal(back[key], value), key
    assert meta_back["aesthete.source_format"] == "comfyui"


def _update(sd: dict[str, torch.Tensor], up: str, down: str, scale: float) -> torch.Tensor:
    return scale * sd[up].double() @ sd[down].double()


# every format for the same three modules, written with names taken from outside this pack's tables:
# ldm and diffusers spellings of SDXL modules as in the diffusers and ComfyUI projects, DiffSynth's from its
# own converter (unet_names.json)
MODULES = [
    # (ldm, diffusers, diffsynth)
    ("input_blocks.4.1.transformer_blocks.1.attn2.to_out.0", "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_out.0",
     "blocks.7.transformer_blocks.1.attn2.to_out"),
    ("middle_block.1.transformer_blocks.9.attn1.to_k", "mid_block.attentions.0.transformer_blocks.9.attn1.to_k",
     "blocks.21.transformer_blocks.9.attn1.to_k"),
    ("output_blocks.5.1.transformer_blocks.0.attn1.to_q", "up_blocks.1.attentions.2.transformer_blocks.0.attn1.to_q",
     "blocks.41.transformer_blocks.0.attn1.to_q"),
]


def test_hand_written_names_agree_with_diffsynth_table():
    table = json.loads((FIXTURES / "unet_names.json").read_text())["sdxl"]
    for ldm, _, ds in MODULES:
        assert _strip_param(table[ldm + ".weight"]) == ds


def _variants(rank=4, out_dim=64, in_dim=2048, stored_alpha=2.0):
    """{format name: (state dict, the update expected for each ldm module with the automatic alpha)}"""
    g = torch.Generator().manual_seed(1)
    mats = {ldm: (torch.randn(out_dim, rank, generator=g), torch.randn(rank, in_dim, generator=g))
            for ldm, _, _ in MODULES}
    out = {}

    def build(name, key_fn, alpha_key=None, alpha=None):
        sd = {}
        for ldm, diffusers, ds in MODULES:
            up, down = mats[ldm]
            up_key, down_key = key_fn(ldm, diffusers, ds)
            sd[up_key], sd[down_key] = up, down
            if alpha_key:
                sd[alpha_key(ldm, diffusers, ds)] = torch.tensor(alpha)
        # automatic alpha for files without one: DiffSynth 1.x's recipe (4), else the rank (scale 1.0)
        scale = (alpha if alpha_key else 4.0 if name == "diffsynth" else rank) / rank
        out[name] = (sd, {ldm: scale * mats[ldm][0].double() @ mats[ldm][1].double() for ldm, _, _ in MODULES})

    a = stored_alpha
    build("comfyui", lambda m, d, s: (f"diffusion_model.{m}.lora_up.weight", f"diffusion_model.{m}.lora_down.weight"),
          lambda m, d, s: f"diffusion_model.{m}.alpha", a)
    kohya = lambda n: n.replace(".", "_")  # noqa: E731
    build("kohya", lambda m, d, s: (f"lora_unet_{kohya(m)}.lora_up.weight", f"lora_unet_{kohya(m)}.lora_down.weight"),
          lambda m, d, s: f"lora_unet_{kohya(m)}.alpha", a)
    build("kohya-diffusers", lambda m, d, s: (f"lora_unet_{kohya(d)}.lora_up.weight",
                                               f"lora_unet_{kohya(d)}.lora_down.weight"),
          lambda m, d, s: f"lora_unet_{kohya(d)}.alpha", a)
    build("diffusers-peft", lambda m, d, s: (f"{d}.lora_B.weight", f"{d}.lora_A.weight"))
    build("peft-default", lambda m, d, s: (f"base_model.model.{d}.lora_B.default.weight",
                                           f"base_model.model.{d}.lora_A.default.weight"))
    build("unet-peft", lambda m, d, s: (f"unet.{d}.lora_B.weight", f"unet.{d}.lora_A.weight"))

    def processor(m, d, s):
        name = d.replace(".to_", ".processor.to_").removesuffix(".0")
        return f"unet.{name}_lora.up.weight", f"unet.{name}_lora.down.weight"
    build("diffusers-processor", processor)
    build("diffsynth", lambda m, d, s: (f"{s}.lora_B.default.weight", f"{s}.lora_A.default.weight"))
    build("comfyui-peft", lambda m, d, s: (f"diffusion_model.{m}.lora_B.weight", f"diffusion_model.{m}.lora_A.weight"))
    return out


VARIANTS = _variants()
EXPECTED_FORMAT = {"comfyui": "comfyui", "kohya": "kohya", "kohya-diffusers": "kohya",
                   "diffusers-peft": "diffusers-peft", "peft-default": "diffusers-peft", "unet-peft": "diffusers-peft",
                   "diffusers-processor": "diffusers", "diffsynth": "diffsynth", "comfyui-peft": "comfyui-peft"}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_format_gives_the_same_update(name):
    sd, expected = VARIANTS[name]
    parsed = parse_lora(sd)
    assert parsed.format == EXPECTED_FORMAT[name]
    assert parsed.base == "sdxl" and parsed.unplaced == {}
    comfy, meta = convert_lora(sd, to="comfyui")
    assert len(comfy) == 3 * len(MODULES)
    for ldm, delta in expected.items():
        k = f"diffusion_model.{ldm}"
        got = _update(comfy, f"{k}.lora_up.weight", f"{k}.lora_down.weight",
                      comfy[f"{k}.alpha"].item() / comfy[f"{k}.lora_down.weight"].shape[0])
        torch.testing.assert_close(got, delta, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_to_diffsynth_keeps_the_update_at_training_alpha(name):
    sd, _ = VARIANTS[name]
    ds, meta = convert_lora(sd, to="diffsynth", alpha=8.0)
    assert meta["aesthete.alpha"] == "8"
    parsed = {layer.target: layer for layer in parse_lora(sd).layers}
    for ldm, _, s in MODULES:
        source = parsed["diffusion_model." + ldm]
        # a stored alpha is kept as an update; files without one were trained at the given alpha 8
        scale = (source.alpha if source.alpha is not None else 8.0) / source.rank
        delta = scale * source.up.double() @ source.down.double()
        up, down = ds[f"{s}.lora_B.default.weight"], ds[f"{s}.lora_A.default.weight"]
        torch.testing.assert_close(8.0 / up.shape[1] * up.double() @ down.double(), delta, rtol=1e-5, atol=1e-8)


def test_alpha_rules():
    key = "diffusion_model." + MODULES[0][0] + ".alpha"
    diffsynth, _ = VARIANTS["diffsynth"]
    assert convert_lora(diffsynth, "comfyui")[0][key].item() == 4.0  # DiffSynth 1.x's recipe
    assert convert_lora(diffsynth, "comfyui", alpha=0)[0][key].item() == 4.0  # 0: automatic
    assert convert_lora(diffsynth, "comfyui", alpha=16)[0][key].item() == 16.0
    peft, _ = _variants(rank=8)["diffusers-peft"]
    assert convert_lora(peft, "comfyui")[0][key].item() == 8.0  # others: the rank, scale 1.0
    assert convert_lora(peft, "comfyui", alpha=4)[0][key].item() == 4.0
    stored, _ = VARIANTS["comfyui"]
    assert convert_lora(stored, "comfyui", alpha=16)[0][key].item() == 2.0  # a stored alpha wins


def test_sd15_base_is_inferred_from_names_and_width():
    g = torch.Generator().manual_seed(2)
    # SD1.5 has attention at its first level (blocks.1 in DiffSynth's SD UNet; input_blocks.1 in ldm)
    sd = {"blocks.1.transformer_blocks.0.attn2.to_k.lora_A.default.weight": torch.randn(4, 768, generator=g),
          "blocks.1.transformer_blocks.0.attn2.to_k.lora_B.default.weight": torch.randn(320, 4, generator=g)}
    parsed = parse_lora(sd)
    assert parsed.base == "sd15"
    assert parsed.layers[0].target == "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k"
    # a name valid in both layouts: the cross-attention width decides
    both = {"lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight": torch.randn(4, 768),
            "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_up.weight": torch.randn(640, 4)}
    assert parse_lora(both).base == "sd15"
    both["lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight"] = torch.randn(4, 2048)
    assert parse_lora(both).base == "sdxl"


def test_unplaced_keys_are_reported_not_dropped(kolors_sd):
    sd = dict(kolors_sd)
    sd["blocks.99.transformer_blocks.0.attn1.to_q.lora_A.default.weight"] = torch.zeros(16, 640)
    sd["blocks.99.transformer_blocks.0.attn1.to_q.lora_B.default.weight"] = torch.zeros(640, 16)
    sd["emb_params.weight"] = torch.zeros(2, 768)
    result = convert_lora_with_report(sd, "comfyui")
    assert result.parsed.placed_keys == 1120 and result.parsed.total_keys == 1123
    assert "blocks.99" in result.dropped["blocks.99.transformer_blocks.0.attn1.to_q.lora_B.default.weight"]
    assert "not a tensor kind" in result.dropped["emb_params.weight"]
    assert result.metadata["aesthete.dropped_keys"] == "3"


def test_a_scale_beside_a_layer_goes_with_it(kolors_sd):
    """A DoRA scale in DiffSynth naming makes its layer a DoRA layer (never a plain LoRA without its scale); an
    unknown tensor named after a placed layer stays with that layer (the loader must use it or refuse)."""
    sd = dict(kolors_sd)
    sd["blocks.7.transformer_blocks.0.attn1.to_q.dora_scale"] = torch.ones(640, 1)
    sd["blocks.7.transformer_blocks.0.attn1.to_k.some_new_scale"] = torch.ones(1)
    parsed = parse_lora(sd)
    assert parsed.unplaced == {}
    layers = {layer.source: layer for layer in parsed.layers}
    assert layers["blocks.7.transformer_blocks.0.attn1.to_q"].kind == "DoRA"
    assert ".some_new_scale" in layers["blocks.7.transformer_blocks.0.attn1.to_k"].tensors
    tensors, _ = convert_lora(sd, "comfyui")
    assert "diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.dora_scale" in tensors
    with pytest.raises(LoraConversionError, match="cannot carry this file"):
        convert_lora(sd, "diffsynth")


def test_half_a_layer_is_reported():
    sd = {"diffusion_model.middle_block.1.transformer_blocks.0.attn1.to_q.lora_up.weight": torch.zeros(8, 4),
          "diffusion_model.middle_block.1.transformer_blocks.0.attn1.to_k.lora_up.weight": torch.zeros(8, 4),
          "diffusion_model.middle_block.1.transformer_blocks.0.attn1.to_k.lora_down.weight": torch.zeros(4, 8)}
    parsed = parse_lora(sd, base="sdxl")
    assert len(parsed.layers) == 1
    assert "no down/A matrix" in parsed.unplaced["diffusion_model.middle_block.1.transformer_blocks.0.attn1.to_q.lora_up.weight"]


def test_nothing_placed_is_an_error_naming_the_format():
    sd = {"transformer.single_blocks.0.linear1.lora_A.weight": torch.zeros(4, 8),
          "transformer.single_blocks.0.linear1.lora_B.weight": torch.zeros(8, 4)}
    with pytest.raises(LoraConversionError, match="none of the 2 tensors"):
        convert_lora(sd, "comfyui")
    with pytest.raises(LoraConversionError, match="DiffSynth-Studio 1.x"):
        convert_lora({"blocks.200.attn.to_q.lora_A.default.weight": torch.zeros(4, 8),
                      "blocks.200.attn.to_q.lora_B.default.weight": torch.zeros(8, 4)}, "comfyui")


def test_bad_arguments():
    sd, _ = VARIANTS["comfyui"]
    with pytest.raises(ValueError, match="unknown target"):
        convert_lora(sd, to="a1111")
    with pytest.raises(ValueError, match="unknown base"):
        convert_lora(sd, to="comfyui", base="flux")


def test_text_encoder_layers_pass_to_comfyui_and_are_reported_for_diffsynth():
    sd, _ = VARIANTS["kohya"]
    sd = dict(sd)
    sd["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight"] = torch.zeros(768, 4)
    sd["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"] = torch.zeros(4, 768)
    comfy, _ = convert_lora(sd, "comfyui")
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight" in comfy
    result = convert_lora_with_report(sd, "diffsynth")
    assert len(result.tensors) == 2 * len(MODULES)
    assert "text-encoder" in result.dropped["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight"]


def test_restrict_to_model_reports_missing_and_mismatched_layers():
    sd, _ = VARIANTS["comfyui"]
    parsed = parse_lora(sd)
    shapes = {f"diffusion_model.{MODULES[0][0]}.weight": (64, 2048),
              f"diffusion_model.{MODULES[1][0]}.weight": (32, 2048)}
    kept = restrict_to_model(parsed, shapes, clip_connected=False)
    assert [layer.target for layer in kept.layers] == ["diffusion_model." + MODULES[0][0]]
    reasons = set(kept.unplaced.values())
    assert any("shape mismatch" in r for r in reasons) and any("has no" in r for r in reasons)
    assert kept.placed_keys == 3


# --- the kinds ComfyUI's weight adapters apply, placed by a key map ---

@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_is_recognised_and_handed_over_whole(kind):
    g = torch.Generator().manual_seed(3)
    shape = (320, 320, 3, 3) if kind in CONV_KINDS else (320, 768)
    module = "input_blocks.1.0.in_layers.2" if kind in CONV_KINDS else "input_blocks.1.1.transformer_blocks.0.attn2.to_k"
    layer = lycoris_layer(kind, shape, 4, 2.0, g, bias=320)
    sd = {f"lora_unet_{module.replace('.', '_')}.{suffix}": t for suffix, t in layer.items()}
    parsed = parse_lora(sd, base="sd15")
    assert parsed.format == "kohya" and parsed.unplaced == {}
    (placed,) = parsed.layers
    assert placed.label == {"lora": "kohya LoRA", "locon": "kohya LoCon", "locon-tucker": "kohya LoCon (Tucker)",
                            "loha": "kohya LoHa", "lokr": "kohya LoKr", "dora": "kohya DoRA",
                            "diff": "kohya full diff"}[kind]
    assert placed.weight_key == f"diffusion_model.{module}.weight"
    assert update_numel(placed) == math.prod(shape)
    tensors, to_load = loader_tensors(parsed, alpha=4.0)
    assert to_load == {placed.name: placed.weight_key}
    assert {k[len(placed.name) + 1:] for k in tensors} == set(layer)  # every tensor, as ComfyUI reads it
    assert unread_tensors(parsed, set(tensors)) == {}
    missing = next(k for k in tensors if not k.endswith((".lora_up.weight", ".hada_w1_a", ".lokr_w1", ".diff")))
    assert unread_tensors(parsed, set(tensors) - {missing}) == {missing: placed.source}


def test_kohya_names_follow_the_models_own_key_map():
    """A kohya name is placed where the loaded model's key map says, not where standard SD1.5 has that block."""
    name = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    sd = {f"{name}.lora_up.weight": torch.zeros(640, 4), f"{name}.lora_down.weight": torch.zeros(4, 640)}
    assert parse_lora(sd, base="sd15").layers[0].weight_key == \
        "diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight"  # standard SD1.5
    small = {name: "diffusion_model.input_blocks.3.1.transformer_blocks.0.attn1.to_q.weight"}  # one res block
    (layer,) = parse_lora(sd, small, base="sd15").layers
    assert layer.weight_key == small[name] and layer.as_written


KOLORS_KEY_MAP = {**layout.standard_key_map("sdxl"), "diffusion_model.encoder_hid_proj":
                  "diffusion_model.encoder_hid_proj.weight"}


@pytest.mark.parametrize("names", [
    ("text_intermediate_proj.lora_B.default.weight", "text_intermediate_proj.lora_A.default.weight"),  # DiffSynth 1.x
    ("encoder_hid_proj.lora_B.weight", "encoder_hid_proj.lora_A.weight"),  # diffusers / peft
    ("base_model.model.encoder_hid_proj.lora_B.default.weight", "base_model.model.encoder_hid_proj.lora_A.default.weight"),
    ("unet.encoder_hid_proj.lora.up.weight", "unet.encoder_hid_proj.lora.down.weight"),
])
def test_kolors_text_projection_lands_on_encoder_hid_proj(names):
    up, down = names
    sd = {up: torch.zeros(2048, 8), down: torch.zeros(8, 4096),
          "blocks.7.transformer_blocks.0.attn1.to_q.lora_B.default.weight": torch.zeros(640, 8),
          "blocks.7.transformer_blocks.0.attn1.to_q.lora_A.default.weight": torch.zeros(8, 640)}
    parsed = parse_lora(sd, KOLORS_KEY_MAP, base="sdxl")
    assert parsed.unplaced == {}
    assert "diffusion_model.encoder_hid_proj.weight" in {layer.weight_key for layer in parsed.layers}
    plain_sdxl = parse_lora(sd, layout.standard_key_map("sdxl"), base="sdxl")
    assert "Kolors text projection" in plain_sdxl.unplaced[up]


def test_peft_dora_magnitude_is_never_dropped():
    d = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    sd = {f"{d}.lora_A.weight": torch.zeros(4, 640), f"{d}.lora_B.weight": torch.zeros(640, 4),
          f"{d}.lora_magnitude_vector.weight": torch.ones(640)}
    parsed = parse_lora(sd, base="sdxl")
    (layer,) = parsed.layers
    tensors, _ = loader_tensors(parsed, alpha=0)
    read = {k for k in tensors if "magnitude" not in k}  # what ComfyUI's adapters read
    assert unread_tensors(parsed, read) == {f"{d}.lora_magnitude_vector.weight": d}


@pytest.mark.parametrize("suffixes, missing", [
    (("lora_down.weight", "alpha"), "no up/B matrix"),
    (("hada_w1_a", "hada_w1_b", "hada_w2_a"), "no hada_w2_b"),
    (("lokr_w1",), "no lokr_w2"),
    (("lokr_w1", "lokr_w2_a"), "no lokr_w2_b"),
    (("alpha", "dora_scale"), "no tensor ComfyUI applies"),
])
def test_an_incomplete_layer_is_reported_not_applied(suffixes, missing):
    name = "lora_unet_input_blocks_4_1_proj_in"
    sd = {f"{name}.{s}": torch.zeros(4, 4) for s in suffixes}
    parsed = parse_lora(sd, base="sdxl")
    assert parsed.layers == [] and set(parsed.unplaced) == set(sd)
    assert all(missing in why for why in parsed.unplaced.values()), parsed.unplaced


def test_the_report_says_when_comfyuis_converter_changed_the_tensor_count(kolors_sd):
    """Newer ComfyUI versions split fused q/k/v LoRA tensors (and drop unused duplicates) before loading; the counts
    the loader reports are then the converted tensors', and the report says so instead of "placed 9 of 3"."""
    from aesthete.lora.report import report_text

    parsed = parse_lora(dict(list(kolors_sd.items())[:6]))
    plain = report_text("x", parsed, 4.0, file_keys=parsed.total_keys)
    converted = report_text("x", parsed, 4.0, file_keys=parsed.total_keys - 2)
    assert "converter" not in plain
    assert f"turned the file's {parsed.total_keys - 2} tensors into {parsed.total_keys}" in converted

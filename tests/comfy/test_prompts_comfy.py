"""Prompt composer, negative presets and composer presets in a real ComfyUI.

The weights the composer writes are checked with ComfyUI's own parser (comfy.sd1_clip.token_weights,
escape_important, unescape_important) and its SD1 tokenizer, run from the embedded ComfyUI source in a
subprocess (harness/comfy_prompt_parser.py): the prompt read is the one the server's composer produced, and the
parser is the code CLIPTextEncode calls, so a weight that ComfyUI would not read fails here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from aesthete.prompts import composer
from devkit.client import ExecutionError
from harness.comfy_prompt_parser import parse_prompts
from devkit.graph import new_graph

NEGATIVE_ZH = ["模糊", "低分辨率", "变形", "扭曲", "噪点", "过曝", "欠曝", "丑陋", "不自然", "不完整", "错误颜色",
               "不对称", "低质量", "混乱", "杂乱", "错误比例", "伪影", "重影", "过度锐化"]


def _composer(g, clip=None, **fields):
    inputs = {"separator": "auto", "dedupe": True, **fields}
    if clip is not None:
        inputs["clip"] = clip
    return g.node("AesthetePromptComposer", **inputs)


def _ui_text(result, node_id: str) -> str:
    return result.node_output(node_id)["text"][0]


def test_composer_and_negative_preset_drive_clip_text_encode_and_ksampler(comfy, comfy_server, sd15_ckpt):
    g = new_graph()
    ckpt = g.node("CheckpointLoaderSimple", ckpt_name=sd15_ckpt)
    prompt_node = _composer(g, ckpt.out(1), style="masterpiece", character="ganyu (genshin impact)",
                            hair="Blue hair\nlong hair", hair_weight=1.2, clothing="white dress, blue HAIR",
                            clothing_weight=0.8, objects="lantern", objects_on=False, view_angle="   ")
    negative = g.node("AestheteNegativePrompt", preset="recipe-zh", extra="watermark，模糊", separator="auto")
    positive_cond = g.node("CLIPTextEncode", text=prompt_node.out(0), clip=ckpt.out(1))
    negative_cond = g.node("CLIPTextEncode", text=negative.out(0), clip=ckpt.out(1))
    latent = g.node("EmptyLatentImage", width=64, height=64, batch_size=1)
    sampled = g.node("KSampler", model=ckpt.out(0), positive=positive_cond.out(0), negative=negative_cond.out(0),
                     latent_image=latent.out(0), seed=1, steps=1, cfg=7.0, sampler_name="euler",
                     scheduler="normal", denoise=1.0)
    decoded = g.node("VAEDecode", samples=sampled.out(0), vae=ckpt.out(2))
    saved = g.node("SaveImage", images=decoded.out(0), filename_prefix="aesthete_prompts")
    negative_shown = g.node("PreviewAny", source=negative.out(0))
    # a prompt past one 77-token chunk: the composer must say so
    long = _composer(g, ckpt.out(1), scene=", ".join(f"scene detail number {i}" for i in range(20)))
    g.node("PreviewAny", source=long.out(0))
    long_report_shown = g.node("PreviewAny", source=long.out(2))  # the report as users read it
    result = comfy.run(g.finalize())

    shown = _ui_text(result, prompt_node.id)
    prompt, report = shown.split("\n\n", 1)
    assert prompt == r"masterpiece, ganyu \(genshin impact\), (Blue hair, long hair:1.2), (white dress:0.8)"
    assert report.startswith("l: ") and "in 1 chunk" in report and "WARNING" not in report
    assert int(report.split()[1]) > 10

    assert _ui_text(result, negative_shown.id) == "，".join(NEGATIVE_ZH + ["watermark"])

    long_report = _ui_text(result, long_report_shown.id)
    assert _ui_text(result, long.id).endswith("\n\n" + long_report)
    assert "2 chunks" in long_report and "WARNING: past one 77-token chunk" in long_report
    assert "past one 77-token chunk" in comfy_server.log_text()

    [image] = result.node_output(saved.id)["images"]
    path = comfy_server.output_dir / image.get("subfolder", "") / image["filename"]
    with Image.open(path) as im:
        assert im.size == (64, 64)

    # ComfyUI's own parser reads the weights the server's composer wrote, and nothing else
    [parsed] = parse_prompts([prompt])
    weighted = [(text, w) for text, w in parsed["segments"] if w != 1.0]
    assert weighted == [("Blue hair, long hair", 1.2), ("white dress", 0.8)]
    plain = "".join(text for text, w in parsed["segments"] if w == 1.0)
    assert "ganyu (genshin impact)" in plain  # the user's parentheses reach the tokenizer as text, weight 1
    assert set(parsed["token_weights"]) == {1.0, 1.2, 0.8}


def test_parser_reads_composer_weights_in_hard_cases():
    """Compose tricky fields with the domain code, then let ComfyUI's parser read them (no server needed)."""
    cases = [
        # (fields, expected weighted segments as ComfyUI reads them)
        ({"character": "ganyu (genshin impact)", "character_weight": 1.3},
         [("ganyu (genshin impact)", 1.3)]),
        ({"hair": "blue hair (long:1.5)", "face": "smile"}, []),  # a typed weight is text, not a weight
        ({"pose": r"arms \(crossed\)", "pose_weight": 0.5, "scene": "ratio 16:9", "scene_weight": 1.25},
         [("arms (crossed)", 0.5), ("ratio 16:9", 1.25)]),
        ({"objects": "a ((b)) c)(", "objects_weight": 2.0}, [("a ((b)) c)(", 2.0)]),
        ({"style": "二次元", "hair": "蓝发少女", "hair_weight": 1.2, "extra": "trailing\\"},
         [("蓝发少女", 1.2)]),
        ({"weather": "snow", "weather_weight": 0.0, "time": "night"}, [("snow", 0.0)]),
    ]
    prompts = [composer.compose(composer.composition_from_values(fields)) for fields, _ in cases]
    for (fields, expected), prompt, parsed in zip(cases, prompts, parse_prompts(prompts)):
        got = [(text, w) for text, w in parsed["segments"] if w != 1.0]
        assert got == expected, (fields, prompt, parsed["segments"])
        # every user character reaches the tokenizer: the segments rebuild the fields' text
        rebuilt = "".join(text for text, _ in parsed["segments"])
        for key, value in fields.items():
            if isinstance(value, str):
                assert value.replace("\\(", "(").replace("\\)", ")") in rebuilt, (key, rebuilt)


def test_presets_are_saved_in_the_user_folder_and_loaded_again(comfy, comfy_server):
    folder = comfy_server.user_dir / "default" / "aesthete" / "prompt_presets"
    g = new_graph()
    fields = _composer(g, character="ganyu", hair="蓝发少女", hair_weight=1.2, scene="白色背景", separator="auto")
    save = g.node("AesthetePromptPresetSave", fields=fields.out(1), name="ganyu 测试", overwrite=True)
    result = comfy.run(g.finalize())
    saved = json.loads((folder / "ganyu 测试.json").read_text(encoding="utf-8"))
    assert saved["fields"]["hair"] == {"text": "蓝发少女", "weight": 1.2, "enabled": True}
    assert "ganyu 测试" in _ui_text(result, save.id)

    options = comfy.object_info()["AesthetePromptPresetLoad"]["input"]["required"]["name"]
    names = options[1]["options"] if len(options) > 1 and "options" in options[1] else options[0]
    assert {"ganyu 测试", "recipe-example"} <= set(names)

    g = new_graph()
    loaded = g.node("AesthetePromptPresetLoad", name="ganyu 测试")
    loaded_shown = g.node("PreviewAny", source=loaded.out(0))
    # a composer fed the preset: its own hair replaces the preset's, the rest comes from the preset
    fed = _composer(g, preset=loaded.out(1), hair="red hair", scene="", shot="close-up")
    fed_shown = g.node("PreviewAny", source=fed.out(0))
    shipped = g.node("AesthetePromptPresetLoad", name="recipe-example")
    shipped_shown = g.node("PreviewAny", source=shipped.out(0))
    result = comfy.run(g.finalize())
    assert _ui_text(result, loaded_shown.id) == "ganyu，(蓝发少女:1.2)，白色背景"
    assert _ui_text(result, fed_shown.id) == "ganyu，close-up，red hair，白色背景"
    assert _ui_text(result, shipped_shown.id) == "二次元，genshin，genshin impact，ganyu，蓝发少女，白色背景"  # the recipe's


@pytest.mark.parametrize("name", ["../escaped", "sub/dir", ".hidden"])
def test_preset_name_never_writes_outside_the_user_folder(comfy, comfy_server, name):
    g = new_graph()
    g.node("AesthetePromptPresetSave", fields=_composer(g, character="ganyu").out(1), name=name, overwrite=True)
    with pytest.raises(ExecutionError, match="preset name"):
        comfy.run(g.finalize())
    base = comfy_server.base_dir
    assert not list(base.rglob("escaped.json")) and not list(base.rglob("dir.json"))
    assert not list(base.rglob(".hidden.json"))


def test_the_readme_names_the_categories_the_nodes_are_in(comfy):
    """The Add Node menu's folders are the README's (it said Aesthete/prompts where the code said Aesthete/prompt)."""
    categories = {v["category"] for k, v in comfy.object_info().items() if k.startswith("Aesthete")}
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"\| (Aesthete/\w+) \|", readme))
    assert listed and listed <= categories, f"README lists {sorted(listed)}, the nodes are in {sorted(categories)}"

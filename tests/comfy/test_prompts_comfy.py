"""Prompt composer, negative presets and composer presets in a real ComfyUI (issue 4).

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
from harness.client import ExecutionError
from harness.comfy_prompt_parser import parse_prompts

NEGATIVE_ZH = ["模糊", "低分辨率", "变形", "扭曲", "噪点", "过曝", "欠曝", "丑陋", "不自然", "不完整", "错误颜色",
               "不对称", "低质量", "混乱", "杂乱", "错误比例", "伪影", "重影", "过度锐化"]


def _composer(clip=None, **fields) -> dict:
    inputs = {"separator": "auto", "dedupe": True, **fields}
    if clip is not None:
        inputs["clip"] = clip
    return {"class_type": "AesthetePromptComposer", "inputs": inputs}


def _ui_text(result, node_id: str) -> str:
    return result.node_output(node_id)["text"][0]


def test_composer_and_negative_preset_drive_clip_text_encode_and_ksampler(comfy, comfy_server, sd15_ckpt):
    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": sd15_ckpt}},
        "2": _composer(["1", 1], style="masterpiece", character="ganyu (genshin impact)",
                       hair="Blue hair\nlong hair", hair_weight=1.2, clothing="white dress, blue HAIR",
                       clothing_weight=0.8, objects="lantern", objects_on=False, view_angle="   "),
        "3": {"class_type": "AestheteNegativePrompt",
              "inputs": {"preset": "recipe-zh", "extra": "watermark，模糊", "separator": "auto"}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": ["2", 0], "clip": ["1", 1]}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": ["3", 0], "clip": ["1", 1]}},
        "6": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "7": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["4", 0], "negative": ["5", 0], "latent_image": ["6", 0], "seed": 1,
            "steps": 1, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["1", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "aesthete_prompts"}},
        "10": {"class_type": "PreviewAny", "inputs": {"source": ["3", 0]}},
        # a prompt past one 77-token chunk: the composer must say so
        "11": _composer(["1", 1], scene=", ".join(f"scene detail number {i}" for i in range(20))),
        "12": {"class_type": "PreviewAny", "inputs": {"source": ["11", 0]}},
        "13": {"class_type": "PreviewAny", "inputs": {"source": ["11", 2]}},  # the report as users read it
    }
    result = comfy.run(graph)

    shown = _ui_text(result, "2")
    prompt, report = shown.split("\n\n", 1)
    assert prompt == r"masterpiece, ganyu \(genshin impact\), (Blue hair, long hair:1.2), (white dress:0.8)"
    assert report.startswith("l: ") and "in 1 chunk" in report and "WARNING" not in report
    assert int(report.split()[1]) > 10

    assert _ui_text(result, "10") == "，".join(NEGATIVE_ZH + ["watermark"])

    long_report = _ui_text(result, "13")
    assert _ui_text(result, "11").endswith("\n\n" + long_report)
    assert "2 chunks" in long_report and "WARNING: past one 77-token chunk" in long_report
    assert "past one 77-token chunk" in comfy_server.log_text()

    [image] = result.node_output("9")["images"]
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
    save = {
        "1": _composer(character="ganyu", hair="蓝发少女", hair_weight=1.2, scene="白色背景", separator="auto"),
        "2": {"class_type": "AesthetePromptPresetSave",
              "inputs": {"fields": ["1", 1], "name": "ganyu 测试", "overwrite": True}},
    }
    result = comfy.run(save)
    saved = json.loads((folder / "ganyu 测试.json").read_text(encoding="utf-8"))
    assert saved["fields"]["hair"] == {"text": "蓝发少女", "weight": 1.2, "enabled": True}
    assert "ganyu 测试" in _ui_text(result, "2")

    options = comfy.object_info()["AesthetePromptPresetLoad"]["input"]["required"]["name"]
    names = options[1]["options"] if len(options) > 1 and "options" in options[1] else options[0]
    assert {"ganyu 测试", "recipe-example"} <= set(names)

    load = {
        "1": {"class_type": "AesthetePromptPresetLoad", "inputs": {"name": "ganyu 测试"}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
        # a composer fed the preset: its own hair replaces the preset's, the rest comes from the preset
        "3": _composer(preset=["1", 1], hair="red hair", scene="", shot="close-up"),
        "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 0]}},
        "5": {"class_type": "AesthetePromptPresetLoad", "inputs": {"name": "recipe-example"}},
        "6": {"class_type": "PreviewAny", "inputs": {"source": ["5", 0]}},
    }
    result = comfy.run(load)
    assert _ui_text(result, "2") == "ganyu，(蓝发少女:1.2)，白色背景"
    assert _ui_text(result, "4") == "ganyu，close-up，red hair，白色背景"
    assert _ui_text(result, "6") == "二次元，genshin，genshin impact，ganyu，蓝发少女，白色背景"  # the recipe's prompt


@pytest.mark.parametrize("name", ["../escaped", "sub/dir", ".hidden"])
def test_preset_name_never_writes_outside_the_user_folder(comfy, comfy_server, name):
    graph = {
        "1": _composer(character="ganyu"),
        "2": {"class_type": "AesthetePromptPresetSave", "inputs": {"fields": ["1", 1], "name": name,
                                                                    "overwrite": True}},
    }
    with pytest.raises(ExecutionError, match="preset name"):
        comfy.run(graph)
    base = comfy_server.base_dir
    assert not list(base.rglob("escaped.json")) and not list(base.rglob("dir.json"))
    assert not list(base.rglob(".hidden.json"))


def test_the_readme_names_the_categories_the_nodes_are_in(comfy):
    """The Add Node menu's folders are the README's (it said Aesthete/prompts where the code said Aesthete/prompt)."""
    categories = {v["category"] for k, v in comfy.object_info().items() if k.startswith("Aesthete")}
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"\| (Aesthete/\w+) \|", readme))
    assert listed and listed <= categories, f"README lists {sorted(listed)}, the nodes are in {sorted(categories)}"

"""Every user-facing string of every node has English and Chinese text, served by ComfyUI's /i18n."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CJK = re.compile(r"[\u4e00-\u9fff]")


def _load(lang: str) -> dict:
    return json.loads((ROOT / "locales" / lang / "nodeDefs.json").read_text(encoding="utf-8"))


def test_english_locale_matches_the_schemas(comfy):
    en = _load("en")
    ours = {k: v for k, v in comfy.object_info().items() if k.startswith("Aesthete")}
    assert set(en) == set(ours), "run scripts/sync_locales.py"
    for node_id, node in ours.items():
        assert en[node_id]["display_name"] == node["display_name"]
        assert en[node_id]["description"] == node["description"]
        for section in ("required", "optional"):
            for name, spec in node["input"].get(section, {}).items():
                assert en[node_id]["inputs"][name]["tooltip"] == spec[1]["tooltip"], (node_id, name)
        for i, tip in enumerate(node["output_tooltips"]):
            assert en[node_id]["outputs"][str(i)]["tooltip"] == tip, (node_id, i)


def _strings(tree, path=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _strings(v, f"{path}.{k}" if path else k)
    else:
        yield path, tree


def test_chinese_locale_covers_every_string_and_is_served(comfy):
    en, zh = _load("en"), _load("zh")
    zh_strings = dict(_strings(zh))
    for path, text in _strings(en):
        if not text:
            continue
        assert zh_strings.get(path), f"locales/zh/nodeDefs.json lacks {path}"
        if path.endswith(("display_name", "description", "tooltip")):
            assert CJK.search(zh_strings[path]), f"{path} is not Chinese: {zh_strings[path]!r}"
    served = comfy.get("/i18n").json()
    assert served["zh"]["nodeDefs"]["AesthetePromptComposer"] == zh["AesthetePromptComposer"]

"""Negative prompt presets: the recipe's list in Chinese, its English counterpart, and an empty one."""

from __future__ import annotations

from .composer import (SEPARATOR_AUTO, escape_parentheses, pick_separator, split_tags, tag_key)

# the recipe's negative prompt, verbatim
RECIPE_NEGATIVE_ZH = ("模糊, 低分辨率, 变形, 扭曲, 噪点, 过曝, 欠曝, 丑陋, 不自然, 不完整, 错误颜色, 不对称, 低质量, "
                      "混乱, 杂乱, 错误比例, 伪影, 重影, 过度锐化")
# the same tags, in the same order, in English
RECIPE_NEGATIVE_EN = ("blurry, low resolution, deformed, distorted, noise, overexposed, underexposed, ugly, "
                      "unnatural, incomplete, wrong colors, asymmetrical, low quality, chaotic, cluttered, "
                      "wrong proportions, artifacts, ghosting, oversharpened")

# ids are permanent: saved workflows store them
NEGATIVE_PRESETS: dict[str, str] = {
    "recipe-zh": RECIPE_NEGATIVE_ZH,
    "recipe-en": RECIPE_NEGATIVE_EN,
    "empty": "",
}
# (English, Chinese) descriptions of the presets, for the node's tooltip and its translation
PRESET_LABELS: dict[str, tuple[str, str]] = {
    "recipe-zh": ("the recipe's list in Chinese (模糊, 低分辨率, 变形, ...)", "配方的负面词，中文（模糊, 低分辨率, 变形, ……）"),
    "recipe-en": ("the same list in English (blurry, low resolution, deformed, ...)",
                  "同一列表的英文版（blurry, low resolution, deformed, ……）"),
    "empty": ("nothing, only the extra text", "空：只用附加文字"),
}


def negative_prompt(preset: str, extra: str = "", separator: str = SEPARATOR_AUTO, custom_separator: str = "") -> str:
    """The preset's tags, then the extra text's tags not already in it (any case), joined like the composer
    joins (``，`` for Chinese under "auto"). User parentheses are escaped so ComfyUI reads no weight into them."""
    if preset not in NEGATIVE_PRESETS:
        raise ValueError(f"negative preset {preset!r} is unknown; pick one of {list(NEGATIVE_PRESETS)}")
    seen: set[str] = set()
    tags = []
    for tag in split_tags(NEGATIVE_PRESETS[preset]) + split_tags(extra or ""):
        key = tag_key(tag)
        if key not in seen:
            seen.add(key)
            tags.append(escape_parentheses(tag))
    return pick_separator(separator, custom_separator, tags).join(tags)

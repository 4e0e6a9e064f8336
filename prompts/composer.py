"""Prompt-order assembly: the recipe's thirteen fields, in its order, joined into one ComfyUI prompt.

The order is the recipe's: character, view angle, shot, pose, hair, face, action, body, clothing, scene, time,
weather, objects (角色，视角，镜头，姿势，头发，面部，动作，身体，服装，场景，时间，天气，事物), after a leading
style/quality field and before a trailing free field. No ComfyUI import: the node in ``nodes/prompt_nodes.py``
adapts this module, and the unit tests and the CLI use it directly.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass, field

from ..common.tags import split_tags


@dataclass(frozen=True)
class FieldSpec:
    id: str
    label_en: str
    label_zh: str
    example_en: str
    example_zh: str


FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("style", "Style / quality", "风格/质量", "masterpiece, anime style", "二次元，高质量"),
    FieldSpec("character", "Character", "角色", "ganyu, genshin impact", "甘雨，原神"),
    FieldSpec("view_angle", "View angle", "视角", "from side, low angle", "侧面，仰视"),
    FieldSpec("shot", "Shot", "镜头", "close-up, full body", "特写，全身"),
    FieldSpec("pose", "Pose", "姿势", "standing, arms crossed", "站立，双臂交叉"),
    FieldSpec("hair", "Hair", "头发", "long blue hair", "蓝色长发"),
    FieldSpec("face", "Face", "面部", "smile, purple eyes", "微笑，紫色眼睛"),
    FieldSpec("action", "Action", "动作", "holding a bow", "拿着弓"),
    FieldSpec("body", "Body", "身体", "slim", "纤细"),
    FieldSpec("clothing", "Clothing", "服装", "white dress", "白色连衣裙"),
    FieldSpec("scene", "Scene", "场景", "white background", "白色背景"),
    FieldSpec("time", "Time", "时间", "night", "夜晚"),
    FieldSpec("weather", "Weather", "天气", "snowing", "下雪"),
    FieldSpec("objects", "Objects", "事物", "lanterns, flowers", "灯笼，花"),
    FieldSpec("extra", "Extra", "其他", "anything else, appended last", "其他内容，放在最后"),
)
FIELD_IDS: tuple[str, ...] = tuple(f.id for f in FIELDS)

# separator choices as the node shows them; "auto" picks by language, "custom" uses the user's string
SEPARATOR_AUTO, SEPARATOR_CUSTOM = "auto", "custom"
CHINESE_SEPARATOR, LATIN_SEPARATOR = "，", ", "
SEPARATOR_CHOICES: tuple[str, ...] = (SEPARATOR_AUTO, CHINESE_SEPARATOR, LATIN_SEPARATOR, "、", SEPARATOR_CUSTOM)

WEIGHT_MIN, WEIGHT_MAX = 0.0, 3.0

_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff]")


@dataclass
class FieldValue:
    text: str = ""
    weight: float = 1.0
    enabled: bool = True


@dataclass
class Composition:
    """Everything the composer node holds: the fields (by id) and how to join them."""

    fields: dict[str, FieldValue] = field(default_factory=dict)
    separator: str = SEPARATOR_AUTO
    custom_separator: str = ""
    dedupe: bool = True

    def value(self, field_id: str) -> FieldValue:
        return self.fields.get(field_id, FieldValue())

    def filled_from(self, base: Composition) -> Composition:
        """This composition with its empty fields taken from ``base`` (text, weight and switch); a field switched
        off here stays off. The separator and de-duplication settings stay this composition's."""
        merged = {}
        for fid in FIELD_IDS:
            own = self.value(fid)
            if not own.enabled:
                merged[fid] = own
            elif own.text.strip():
                merged[fid] = own
            else:
                merged[fid] = base.value(fid)
        return Composition(merged, self.separator, self.custom_separator, self.dedupe)

    def to_dict(self) -> dict:
        return {
            "separator": self.separator,
            "custom_separator": self.custom_separator,
            "dedupe": self.dedupe,
            "fields": {fid: {"text": v.text, "weight": v.weight, "enabled": v.enabled}
                       for fid, v in ((fid, self.value(fid)) for fid in FIELD_IDS)},
        }

    @classmethod
    def from_dict(cls, data: dict, source: str = "preset") -> Composition:
        """Read what ``to_dict`` wrote; ``source`` names the file in errors."""
        if not isinstance(data, dict) or not isinstance(data.get("fields", {}), dict):
            raise ValueError(f"{source}: not a composer preset (expected an object with 'fields')")
        unknown = set(data.get("fields", {})) - set(FIELD_IDS)
        if unknown:
            raise ValueError(f"{source}: unknown fields {sorted(unknown)}; known fields: {', '.join(FIELD_IDS)}")
        fields = {}
        for fid, raw in data.get("fields", {}).items():
            if isinstance(raw, str):
                raw = {"text": raw}
            if not isinstance(raw, dict):
                raise ValueError(f"{source}: field {fid!r} must be text or an object with text/weight/enabled")
            try:
                value = FieldValue(str(raw.get("text", "")), float(raw.get("weight", 1.0)),
                                   bool(raw.get("enabled", True)))
            except (TypeError, ValueError) as e:
                raise ValueError(f"{source}: field {fid!r} has a weight that is not a number: {e}") from e
            fields[fid] = value
        comp = cls(fields, str(data.get("separator", SEPARATOR_AUTO)), str(data.get("custom_separator", "")),
                   bool(data.get("dedupe", True)))
        check_composition(comp, source)
        return comp


def check_composition(comp: Composition, source: str = "composer") -> None:
    """Raise ValueError naming the bad setting, so the user sees what to fix."""
    if comp.separator not in SEPARATOR_CHOICES:
        raise ValueError(f"{source}: separator {comp.separator!r} is not one of {list(SEPARATOR_CHOICES)}")
    if comp.separator == SEPARATOR_CUSTOM:
        check_separator(comp.custom_separator, source)
    for fid, value in comp.fields.items():
        w = value.weight
        if not math.isfinite(w) or not WEIGHT_MIN <= w <= WEIGHT_MAX:
            raise ValueError(f"{source}: weight {w} of field {fid!r} is outside {WEIGHT_MIN}..{WEIGHT_MAX}")


def check_separator(sep: str, source: str = "composer") -> None:
    if not sep.strip(" "):
        raise ValueError(f"{source}: the custom separator is empty; type one (for example ' | ') or pick another")
    if any(c in sep for c in "()\\:"):
        raise ValueError(f"{source}: the custom separator {sep!r} contains ( ) \\ or :, which ComfyUI's "
                         "prompt-weight parser would read; pick another")


def has_chinese(text: str) -> bool:
    return bool(_HAN.search(text))


def escape_parentheses(tag: str) -> str:
    r"""Escape every parenthesis ComfyUI would read as weight syntax: ``(`` -> ``\(``, ``)`` -> ``\)``.
    A parenthesis the user already escaped stays as it is; a backslash before any other character is kept."""
    out, i = [], 0
    while i < len(tag):
        ch = tag[i]
        if ch == "\\" and i + 1 < len(tag) and tag[i + 1] in "()":
            out.append(tag[i:i + 2])
            i += 2
            continue
        out.append("\\" + ch if ch in "()" else ch)
        i += 1
    return "".join(out)


def tag_key(tag: str) -> str:
    """Identity of a tag for de-duplication: case, width (， vs ,), spacing and escapes do not matter."""
    plain = tag.replace("\\(", "(").replace("\\)", ")")
    return " ".join(unicodedata.normalize("NFKC", plain).casefold().split())


def format_weight(weight: float) -> str:
    return f"{weight:.3f}".rstrip("0").rstrip(".")


def weighted(text: str, weight: float) -> str:
    """``text`` in ComfyUI's weight syntax ``(text:1.2)``; unchanged at weight 1."""
    w = format_weight(weight)
    return text if w == "1" else f"({text}:{w})"


def pick_separator(choice: str, custom: str, tags: list[str]) -> str:
    """The separator for ``choice``: "auto" gives the full-width ``，`` when any tag is Chinese (the recipe's
    own prompt joins its English and Chinese tags with it), ``, `` otherwise."""
    if choice == SEPARATOR_AUTO:
        return CHINESE_SEPARATOR if any(has_chinese(t) for t in tags) else LATIN_SEPARATOR
    if choice == SEPARATOR_CUSTOM:
        check_separator(custom)
        return custom
    if choice not in SEPARATOR_CHOICES:
        raise ValueError(f"separator {choice!r} is not one of {list(SEPARATOR_CHOICES)}")
    return choice


@dataclass
class ComposedPart:
    field_id: str
    tags: list[str]
    weight: float


def compose_parts(comp: Composition) -> list[ComposedPart]:
    """The fields that survive, in prompt order, with their escaped tags; switched-off and empty fields vanish,
    and a tag already present in an earlier place (any case) is dropped when ``comp.dedupe`` is on."""
    check_composition(comp)
    seen: set[str] = set()
    parts = []
    for fid in FIELD_IDS:
        value = comp.value(fid)
        if not value.enabled:
            continue
        tags = []
        for tag in split_tags(value.text):
            key = tag_key(tag)
            if comp.dedupe and key in seen:
                continue
            seen.add(key)
            tags.append(escape_parentheses(tag))
        if tags:
            parts.append(ComposedPart(fid, tags, value.weight))
    return parts


def compose(comp: Composition) -> str:
    """The prompt: fields in the recipe's order, each field's tags joined and wrapped as ``(tags:w)`` when its
    weight is not 1, parts joined by the separator (chosen by language under "auto")."""
    parts = compose_parts(comp)
    sep = pick_separator(comp.separator, comp.custom_separator, [t for p in parts for t in p.tags])
    return sep.join(weighted(sep.join(p.tags), p.weight) for p in parts)


def composition_from_values(values: dict, separator: str = SEPARATOR_AUTO, custom_separator: str = "",
                            dedupe: bool = True) -> Composition:
    """Build a composition from flat widget values: ``<field>``, ``<field>_weight``, ``<field>_on``; a missing
    value takes its default (empty, 1.0, on)."""
    fields = {fid: FieldValue(values.get(fid) or "", float(values.get(f"{fid}_weight", 1.0)),
                              bool(values.get(f"{fid}_on", True)))
              for fid in FIELD_IDS}
    return Composition(fields, separator, custom_separator, dedupe)

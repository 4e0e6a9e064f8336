"""Prompt-order assembly without ComfyUI: order, weights, escaping, punctuation, de-duplication."""

from __future__ import annotations

import pytest

from aesthete.prompts import composer, negative, tokens
from aesthete.prompts.composer import Composition, FieldValue, compose, composition_from_values

RECIPE_ORDER = ["character", "view_angle", "shot", "pose", "hair", "face", "action", "body", "clothing", "scene",
                "time", "weather", "objects"]


def _compose(**values) -> str:
    sep = values.pop("separator", "auto")
    custom = values.pop("custom_separator", "")
    dedupe = values.pop("dedupe", True)
    return compose(composition_from_values(values, sep, custom, dedupe))


def test_fields_follow_the_recipe_order_between_style_and_extra():
    assert list(composer.FIELD_IDS) == ["style", *RECIPE_ORDER, "extra"]
    assert [f.label_zh for f in composer.FIELDS[1:-1]] == list("角色 视角 镜头 姿势 头发 面部 动作 身体 服装 场景 时间 天气 事物"
                                                            .split())
    # filled in reverse, still written in the recipe's order
    values = {fid: f"tag_{fid}" for fid in reversed(composer.FIELD_IDS)}
    assert _compose(**values).split(", ") == [f"tag_{fid}" for fid in composer.FIELD_IDS]


def test_recipe_example_prompt_is_rebuilt_from_fields():
    prompt = _compose(style="二次元", character="genshin，genshin impact，ganyu", hair="蓝发少女", scene="白色背景")
    assert prompt == "二次元，genshin，genshin impact，ganyu，蓝发少女，白色背景"


def test_empty_blank_and_switched_off_fields_vanish():
    assert _compose(character="ganyu", view_angle="  \n ", shot="", pose="standing", pose_on=False,
                    hair=" , ，\n") == "ganyu"
    assert _compose() == ""


@pytest.mark.parametrize("weight, written", [(1.2, "(blue hair, long hair:1.2)"), (0.8, "(blue hair, long hair:0.8)"),
                                             (1.25, "(blue hair, long hair:1.25)"), (0.0, "(blue hair, long hair:0)"),
                                             (1.0, "blue hair, long hair"), (1.0000001, "blue hair, long hair"),
                                             (2.0, "(blue hair, long hair:2)")])
def test_weight_is_written_in_comfyui_syntax_when_not_one(weight, written):
    assert _compose(hair="blue hair\nlong hair", hair_weight=weight) == written


@pytest.mark.parametrize("weight", [-0.1, 3.5, float("nan"), float("inf")])
def test_weight_out_of_range_is_a_clear_error(weight):
    with pytest.raises(ValueError, match="weight .* of field 'face'"):
        _compose(face="smile", face_weight=weight)


def test_user_parentheses_are_escaped_and_not_split():
    assert _compose(character="ganyu (genshin impact, cosplay)") == r"ganyu \(genshin impact, cosplay\)"
    assert _compose(hair="(blue hair:1.5)") == r"\(blue hair:1.5\)"  # a typed weight stays text
    assert _compose(hair=r"already \(escaped\)") == r"already \(escaped\)"
    assert _compose(objects="a ((b)) c)(", objects_weight=1.1) == r"(a \(\(b\)\) c\)\(:1.1)"


def test_separator_follows_language_or_user_choice():
    assert _compose(character="ganyu", hair="blue hair") == "ganyu, blue hair"
    assert _compose(character="ganyu", hair="蓝发") == "ganyu，蓝发"
    assert _compose(character="ganyu", hair="蓝发", separator=", ") == "ganyu, 蓝发"
    assert _compose(character="ganyu", hair="blue hair", separator="，") == "ganyu，blue hair"
    assert _compose(character="甘雨", hair="蓝发", separator="、") == "甘雨、蓝发"
    assert _compose(character="a", hair="b", separator="custom", custom_separator=" | ") == "a | b"
    # full-width and ASCII commas both split tags, inside a weighted group too
    assert _compose(hair="蓝发，长发, 双马尾", hair_weight=1.3) == "(蓝发，长发，双马尾:1.3)"


@pytest.mark.parametrize("custom", ["", "  ", " (", ":", "\\"])
def test_bad_custom_separator_is_refused(custom):
    with pytest.raises(ValueError, match="custom separator"):
        _compose(character="a", hair="b", separator="custom", custom_separator=custom)


def test_unknown_separator_is_refused():
    with pytest.raises(ValueError, match="separator ';' is not one of"):
        _compose(character="a", separator=";")


def test_repeated_tags_are_dropped_keeping_the_first_case():
    assert _compose(character="Ganyu, ganyu", hair="Blue Hair", clothing="blue hair, GANYU, dress") \
        == "Ganyu, Blue Hair, dress"
    # a field emptied by de-duplication vanishes with its weight
    assert _compose(character="ganyu", objects="Ganyu", objects_weight=1.4) == "ganyu"
    # width, spacing and escaping do not make a tag new
    assert _compose(character="ganyu (x)", hair=r"ganyu  \(x\)", scene="ｇａｎｙｕ (x)") == r"ganyu \(x\)"
    assert _compose(character="Ganyu, ganyu", dedupe=False) == "Ganyu, ganyu"


def test_switched_off_field_does_not_hide_a_later_tag():
    assert _compose(character="ganyu", character_on=False, objects="ganyu") == "ganyu"


def test_preset_fills_only_empty_fields_and_off_stays_off():
    base = Composition({"character": FieldValue("ganyu", 1.2), "hair": FieldValue("blue hair"),
                        "scene": FieldValue("snow field"), "time": FieldValue("night", 1.0, False)})
    own = composition_from_values({"hair": "red hair", "scene": "whatever", "scene_on": False, "shot": "close-up"})
    assert compose(own.filled_from(base)) == "(ganyu:1.2), close-up, red hair"


def test_composition_round_trips_through_dict_and_rejects_bad_data():
    comp = composition_from_values({"hair": "蓝发", "hair_weight": 1.2, "scene": "snow", "scene_on": False},
                                   "custom", " / ", False)
    again = Composition.from_dict(comp.to_dict())
    assert again.to_dict() == comp.to_dict() and compose(again) == compose(comp) == "(蓝发:1.2)"
    with pytest.raises(ValueError, match="x.json: unknown fields \\['haircut'\\]"):
        Composition.from_dict({"fields": {"haircut": "short"}}, source="x.json")
    with pytest.raises(ValueError, match="weight that is not a number"):
        Composition.from_dict({"fields": {"hair": {"text": "a", "weight": "heavy"}}})
    with pytest.raises(ValueError, match="not a composer preset"):
        Composition.from_dict(["hair"])


def test_negative_presets_chinese_english_and_empty():
    zh = negative.negative_prompt("recipe-zh", separator=", ")
    assert zh == ("模糊, 低分辨率, 变形, 扭曲, 噪点, 过曝, 欠曝, 丑陋, 不自然, 不完整, 错误颜色, 不对称, 低质量, 混乱, "
                  "杂乱, 错误比例, 伪影, 重影, 过度锐化")  # the recipe's text, verbatim
    assert negative.negative_prompt("recipe-zh").startswith("模糊，低分辨率，")  # auto: Chinese joins with ，
    en = negative.negative_prompt("recipe-en")
    assert en.startswith("blurry, low resolution, ") and len(en.split(", ")) == len(zh.split(", ")) == 19
    assert negative.negative_prompt("empty") == ""
    assert negative.negative_prompt("empty", "watermark (text)") == r"watermark \(text\)"
    assert negative.negative_prompt("recipe-en", "Blurry, watermark").endswith("oversharpened, watermark")
    with pytest.raises(ValueError, match="negative preset 'bad' is unknown"):
        negative.negative_prompt("bad")


def test_token_counts_from_tokenizer_chunks():
    start, end, pad = (49406, 1.0, 0), (49407, 1.0, 0), (49407, 1.0, 0)
    one = {"l": [[start] + [(1, 1.0, 1)] * 10 + [end] + [pad] * 65]}
    two = {"l": [[start] + [(1, 1.0, 1)] * 75 + [end], [start] + [(2, 1.2, 2)] * 5 + [end] + [pad] * 70],
           "g": [[start] + [(1, 1.0, 1)] * 80]}
    [c] = tokens.count_tokens(one)
    assert (c.encoder, c.tokens, c.chunks, c.past_one_chunk) == ("l", 10, 1, False)
    report, past = tokens.token_report(tokens.count_tokens(one))
    assert report == "l: 10 tokens in 1 chunk" and not past
    report, past = tokens.token_report(tokens.count_tokens(two))
    assert past and report.splitlines()[0].startswith("l: 80 tokens in 2 chunks - WARNING: past one 77-token chunk")
    assert report.splitlines()[1] == "g: 80 tokens in 1 chunk"


def test_kolors_token_report_counts_against_the_256_token_context():
    prefix = [(64790, 1.0, 0), (64792, 1.0, 0)]  # ChatGLM3's [gMASK] sop
    short = {"chatglm3": [[(0, 1.0, 0)] * 200 + prefix + [(5, 1.0, 1)] * 54]}
    report, past = tokens.token_report(tokens.count_tokens(short))
    assert report == "chatglm3: 54 of 254 tokens" and not past
    long = {"chatglm3": [prefix + [(5, 1.0, 1)] * 300]}
    report, past = tokens.token_report(tokens.count_tokens(long))
    assert past and report.startswith("chatglm3: 300 of 254 tokens - WARNING: past its 256-token context; "
                                      "the last 46 tokens are cut")

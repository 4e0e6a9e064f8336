"""Named composer presets as JSON files: round trip, names that could escape the folder, atomic writes."""

from __future__ import annotations

import json

import pytest

from aesthete.common import files as common_files
from aesthete.prompts import presets
from aesthete.prompts.composer import compose, composition_from_values


@pytest.fixture()
def comp():
    return composition_from_values({"character": "ganyu", "hair": "蓝发少女", "hair_weight": 1.2,
                                    "scene": "white background", "scene_on": False})


def test_save_then_load_gives_the_same_composition(tmp_path, comp):
    folder = tmp_path / "presets"
    path = presets.save_preset(folder, "  ganyu 肖像 ", comp)
    assert path == folder / "ganyu 肖像.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["format"] == "aesthete-prompt-composer" and "蓝发少女" in path.read_text(encoding="utf-8")
    loaded = presets.load_preset(folder, "ganyu 肖像")
    assert loaded.to_dict() == comp.to_dict()
    assert compose(loaded) == "ganyu，(蓝发少女:1.2)"
    assert [p.name for p in folder.iterdir()] == ["ganyu 肖像.json"]  # no temporary file left


def test_list_has_user_and_shipped_presets_and_user_shadows_shipped(tmp_path, comp):
    assert "recipe-example" in presets.list_presets(None)
    assert compose(presets.load_preset(None, "recipe-example")) == "二次元，genshin，genshin impact，ganyu，蓝发少女，白色背景"
    presets.save_preset(tmp_path, "recipe-example", comp)
    presets.save_preset(tmp_path, "B-mine", comp)
    names = presets.list_presets(tmp_path)
    assert names == sorted(set(names), key=str.casefold) and {"B-mine", "recipe-example"} <= set(names)
    assert compose(presets.load_preset(tmp_path, "recipe-example")) == compose(comp)
    # files a user dropped in with names the loader would refuse, and temporary files, are not listed
    for stray in ("a:b.json", ".p.123.tmp.json", " padded.json"):
        (tmp_path / stray).write_text("{}", encoding="utf-8")
    assert presets.list_presets(tmp_path) == names


@pytest.mark.parametrize("name", ["../outside", "..", "sub/dir", "sub\\dir", ".hidden", "", "   ", "a:b", "x" * 101,
                                  "nul\x00", "/etc/passwd"])
def test_names_never_write_outside_the_folder(tmp_path, comp, name):
    folder = tmp_path / "inner"
    with pytest.raises(ValueError, match="preset name"):
        presets.save_preset(folder, name, comp)
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_existing_preset_is_kept_unless_overwrite(tmp_path, comp):
    presets.save_preset(tmp_path, "p", comp)
    other = composition_from_values({"character": "keqing"})
    with pytest.raises(FileExistsError, match="'p' already exists"):
        presets.save_preset(tmp_path, "p", other, overwrite=False)
    assert compose(presets.load_preset(tmp_path, "p")) == compose(comp)
    presets.save_preset(tmp_path, "p", other, overwrite=True)
    assert compose(presets.load_preset(tmp_path, "p")) == "keqing"


def test_failed_write_leaves_the_old_file_whole(tmp_path, comp, monkeypatch):
    path = presets.save_preset(tmp_path, "p", comp)
    before = path.read_bytes()

    def broken_replace(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(common_files.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        presets.save_preset(tmp_path, "p", composition_from_values({"character": "keqing"}))
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["p.json"]


def test_missing_and_broken_presets_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="composer preset 'nope' not found"):
        presets.load_preset(tmp_path, "nope")
    (tmp_path / "broken.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="broken.json: not a readable JSON"):
        presets.load_preset(tmp_path, "broken")
    (tmp_path / "other.json").write_text('{"format": "something-else", "fields": {}}', encoding="utf-8")
    with pytest.raises(ValueError, match="other.json: format 'something-else'"):
        presets.load_preset(tmp_path, "other")

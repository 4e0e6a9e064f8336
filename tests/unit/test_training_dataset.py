"""Dataset folder reading (captions in three layouts), caption recipe, buckets and crops, aesthetic filtering,
epoch plans. Domain code only, no ComfyUI."""

from __future__ import annotations

import json
import random

import pytest
from PIL import Image

from aesthete.common.captions import CaptionError, find_caption, read_json_tags
from aesthete.common.tags import split_tags
from aesthete.training.captions import CaptionRecipe
from aesthete.training.dataset import DatasetError, bucket_sizes, load_dataset, nearest_bucket
from devkit.training_data import pattern_image, write_pattern_folder


def test_captions_from_txt_json_and_csv(tmp_path):
    write_pattern_folder(tmp_path, count=3, layouts=("txt", "json", "csv"))
    ds = load_dataset(tmp_path, resolution=64)
    assert [img.caption_source for img in ds.images] == ["txt", "json", "csv"]
    for i, img in enumerate(ds.images):
        assert img.tags == ["stripes", "red and blue", f"variant {i}"]


def test_txt_wins_over_json_and_csv(tmp_path):
    pattern_image().save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("from txt")
    (tmp_path / "a.json").write_text(json.dumps(["from json"]))
    (tmp_path / "metadata.csv").write_text("file_name,text\na.png,from csv\n")
    assert find_caption(tmp_path / "a.png", {"a.png": "from csv"}) == (["from txt"], "txt")


def test_json_tag_file_shapes(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"tags": ["x", " y "]}))
    assert read_json_tags(tmp_path / "a.json") == ["x", "y"]
    (tmp_path / "b.json").write_text("{not json")
    with pytest.raises(CaptionError, match="b.json"):
        read_json_tags(tmp_path / "b.json")


def test_bad_csv_header_names_the_file(tmp_path):
    pattern_image().save(tmp_path / "a.png")
    (tmp_path / "metadata.csv").write_text("image,caption\na.png,x\n")
    with pytest.raises(CaptionError, match="metadata.csv"):
        load_dataset(tmp_path, resolution=64)


def test_recipe_trigger_keep_shuffle_dropout():
    tags = split_tags("1girl, red hair, smile, outdoors, ")
    recipe = CaptionRecipe("ptn", keep_first_tags=1, shuffle_tags=True)
    captions = {recipe.build(tags, random.Random(s)) for s in range(20)}
    assert len(captions) > 1  # the rest is shuffled
    for c in captions:
        parts = c.split(", ")
        assert parts[:2] == ["ptn", "1girl"] and sorted(parts[2:]) == sorted(tags[1:])
    dropped = CaptionRecipe("ptn", dropout=1.0).build(tags, random.Random(0))
    assert dropped == "ptn"
    assert CaptionRecipe(dropout=0.5).build(tags, random.Random(1)) in ("", ", ".join(tags))
    assert CaptionRecipe().build(tags, random.Random(0)) == "1girl, red hair, smile, outdoors"


def test_buckets_keep_aspect_and_area():
    sizes = bucket_sizes(512)
    assert (512, 512) in sizes and all(w % 64 == 0 and h % 64 == 0 and w * h <= 512 * 512 for w, h in sizes)
    w, h = nearest_bucket(1024, 512, sizes)
    assert w > h and abs(w / h - 2) < 0.3
    w, h = nearest_bucket(600, 900, sizes)
    assert h > w and abs(w / h - 600 / 900) < 0.1


def test_dataset_buckets_crops_and_report(tmp_path):
    pattern_image((96, 64)).save(tmp_path / "wide.png")
    pattern_image((64, 64)).save(tmp_path / "square.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    ds = load_dataset(tmp_path, resolution=64, crop_mode="buckets")
    sizes = {img.path.name: img.size for img in ds.images}
    assert sizes["square.png"] == (64, 64) and sizes["wide.png"][0] > sizes["wide.png"][1]
    assert [n for n, _ in ds.skipped] == ["broken.png"]
    report = ds.report()
    assert "2 images kept, 1 skipped" in report and "broken.png" in report and "64x64: 1" in report
    cropped = load_dataset(tmp_path, resolution=64, crop_mode="center crop")
    assert {img.size for img in cropped.images} == {(64, 64)}


def test_require_captions_and_empty_folder(tmp_path):
    pattern_image().save(tmp_path / "nocap.png")
    with pytest.raises(DatasetError, match="no caption"):
        load_dataset(tmp_path, resolution=64, require_captions=True)
    with pytest.raises(DatasetError, match="not a folder"):
        load_dataset(tmp_path / "missing")
    with pytest.raises(DatasetError, match="crop mode"):
        load_dataset(tmp_path, crop_mode="stretch")


def test_aesthetic_filter_drops_low_scores(tmp_path):
    write_pattern_folder(tmp_path, count=4)
    seen = []

    def score(images: list[Image.Image], captions: list[str]) -> list[float]:
        seen.extend(images)
        return [float(i) * 2 for i in range(len(images))]  # 0, 2, 4, 6 in file order

    ds = load_dataset(tmp_path, resolution=64, score=score, min_score=3.0)
    assert len(seen) == 4 and all(isinstance(i, Image.Image) for i in seen)
    assert [img.path.name for img in ds.images] == ["pattern_02.png", "pattern_03.png"]
    assert sorted(n for n, _ in ds.skipped) == ["pattern_00.png", "pattern_01.png"]
    assert "aesthetic score 0.00 < 3.00" in ds.report()
    with pytest.raises(DatasetError, match="returned 1 scores for 4"):
        load_dataset(tmp_path, resolution=64, score=lambda imgs, captions: [1.0])
    # nothing left after the filter: a clear error naming why each image went
    with pytest.raises(DatasetError, match=r"no usable training image \(pattern_00.png: aesthetic score 0.00 < 9.00"):
        load_dataset(tmp_path, resolution=64, score=score, min_score=9.0)


def test_prompt_aware_filter_reads_captions_and_skips_the_uncaptioned(tmp_path):
    write_pattern_folder(tmp_path, count=3, layouts=("txt",))
    for p in sorted(tmp_path.glob("*.txt")):
        p.unlink()
    (tmp_path / "pattern_00.txt").write_text("a red fox, snow", encoding="utf-8")
    (tmp_path / "metadata.csv").write_text("file_name,text\npattern_02.png,blue sky\n", encoding="utf-8")
    got = []

    def score(images, captions):
        got.extend(captions)
        return [7.0] * len(images)

    ds = load_dataset(tmp_path, resolution=64, score=score, min_score=3.0, score_needs_captions=True)
    assert got == ["a red fox, snow", "blue sky"]
    assert [img.path.name for img in ds.images] == ["pattern_00.png", "pattern_02.png"]
    assert ds.skipped == [("pattern_01.png", "no caption (.txt, .json or metadata.csv): the scorer reads each "
                                             "image's caption as its prompt")]


def test_plan_epoch_repeats_batches_by_bucket_and_is_reproducible(tmp_path):
    for i in range(3):
        pattern_image((64, 64), seed=i).save(tmp_path / f"sq{i}.png")
        pattern_image((128, 64), seed=i).save(tmp_path / f"wide{i}.png")
    ds = load_dataset(tmp_path, resolution=64, repeats=2, recipe=CaptionRecipe("t", shuffle_tags=True))
    plan = ds.plan_epoch(0, batch_size=4, seed=1)
    assert sorted(i for b in plan for i, _ in b) == sorted(list(range(6)) * 2)
    for batch in plan:
        assert len({ds.images[i].size for i, _ in batch}) == 1 and len(batch) <= 4
    assert len(plan) == ds.steps_per_epoch(4) == 4
    assert plan == ds.plan_epoch(0, batch_size=4, seed=1)
    assert plan != ds.plan_epoch(1, batch_size=4, seed=1)


def test_subfolders_and_csv_paths_relative_to_the_folder(tmp_path):
    (tmp_path / "set_a").mkdir()
    (tmp_path / ".hidden").mkdir()
    pattern_image().save(tmp_path / "set_a" / "x.png")
    pattern_image().save(tmp_path / ".hidden" / "y.png")
    (tmp_path / "metadata.csv").write_text('file_name,text\nset_a/x.png,"tag a, tag b"\n')
    ds = load_dataset(tmp_path, resolution=64)
    assert [(img.path.name, img.tags, img.caption_source) for img in ds.images] == [
        ("x.png", ["tag a", "tag b"], "csv")]

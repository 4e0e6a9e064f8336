"""Captions of images named by a URI (the Ray engine's prompts for s3://, gs://...) follow the rule local images
keep: read here through pyarrow's filesystem on file:// URIs, as a bucket would be read."""

from __future__ import annotations

import json

import pytest

from aesthete.common.captions import CaptionError
from aesthete.scoring.folder import caption_of
from aesthete.scoring.remote import caption_of_uri


@pytest.fixture()
def captioned(tmp_path):
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    for name in ("a.png", "b.png", "c.png", "sub/d.png", "sub/e.png", "none.png"):
        (root / name).write_bytes(b"not read")
    (root / "a.txt").write_text("1girl, blue hair,  smile", encoding="utf-8")
    (root / "b.json").write_text(json.dumps({"tags": ["cat", "window"]}), encoding="utf-8")
    (root / "metadata.csv").write_text("\ufefffile_name,text\nc.png,a lighthouse at dusk\nsub/d.png,\"snow, fox\"\n",
                                       encoding="utf-8")
    (root / "sub" / "metadata.csv").write_text("file_name,text\ne.png,the sub folder's own row\n", encoding="utf-8")
    return root


def test_uri_captions_equal_the_local_rule(captioned):
    local, remote = caption_of(captioned), caption_of_uri(f"file://{captioned}")
    expected = {"a.png": "1girl, blue hair, smile", "b.png": "cat, window", "c.png": "a lighthouse at dusk",
                "sub/d.png": "snow, fox", "sub/e.png": "the sub folder's own row", "none.png": ""}
    for name, caption in expected.items():
        assert remote(f"file://{captioned}/{name}") == local(captioned / name) == caption, name


def test_a_broken_caption_file_is_an_error_naming_it(captioned):
    (captioned / "b.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(CaptionError, match=r"b\.json"):
        caption_of_uri(f"file://{captioned}")(f"file://{captioned}/b.png")

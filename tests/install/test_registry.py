"""Ready for the Comfy Registry: `comfy node validate` passes, the published archive holds what a user's
ComfyUI needs and nothing else, and [tool.comfy] points at real things."""

from __future__ import annotations

import fnmatch
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
from PIL import Image

from harness.comfy_cli import cli_python, comfy, packed_names
from devkit import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
TOOL_COMFY = PYPROJECT["tool"]["comfy"]


def _validate(folder: Path) -> tuple[int, str]:
    proc = comfy("node", "validate", cwd=folder)
    return proc.returncode, proc.stdout + proc.stderr


def test_comfy_node_validate_passes_without_warnings():
    rc, out = _validate(REPO)
    assert rc == 0, out
    assert "All validation checks passed" in out
    # comfy-cli drops an invalid classifier, version range or license with only a warning and exit status 0
    assert not re.search(r"warning|error", out, re.IGNORECASE), out


BROKEN = {
    "a TOML syntax error": ("[project\nname = 'x'\n", "exit"),
    "no version": ("[project]\nname = 'x'\n[tool.comfy]\nPublisherId = 'aesthete'\n", "exit"),
    "a classifier the registry does not know": (
        "[project]\nname = 'x'\nversion = '1.0.0'\nclassifiers = ['Environment :: GPU :: Quantum']\n", "warning"),
}


@pytest.mark.parametrize("what", BROKEN)
def test_validate_catches_a_broken_pyproject(what, tmp_path):
    """What the test above relies on: comfy-cli fails, or warns, on a broken file."""
    text, outcome = BROKEN[what]
    (tmp_path / "pyproject.toml").write_text(text)
    rc, out = _validate(tmp_path)
    if outcome == "exit":
        assert rc != 0, out
    else:
        assert "Warning" in out, out


def test_pyproject_passes_the_build_backends_validation():
    """setuptools validates [project] against the trove classifiers when it builds the package (`pip install .`):
    the registry's accelerator names other than NVIDIA CUDA would make it fail."""
    code = ("from setuptools.config.pyprojecttoml import read_configuration; "
            "print(read_configuration('pyproject.toml')['project']['version'])")
    proc = subprocess.run([str(cli_python()), "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == PROJECT["version"]


def test_classifiers_name_operating_systems_and_accelerators():
    classifiers = PROJECT["classifiers"]
    assert any(c.startswith("Operating System :: ") for c in classifiers)
    assert any(c.startswith("Environment :: GPU :: ") for c in classifiers)


def test_version_is_raised_everywhere_at_once():
    init_version = re.search(r'^__version__ = "([^"]+)"', (REPO / "__init__.py").read_text(), re.MULTILINE)[1]
    changelog_version = re.search(r"^## (\d+\.\d+\.\d+)", (REPO / "CHANGELOG.md").read_text(), re.MULTILINE)[1]
    assert PROJECT["version"] == init_version == changelog_version


def test_icon_is_a_small_square_image_of_this_repository():
    repo_url = PROJECT["urls"]["Repository"]
    owner_repo = repo_url.removeprefix("https://github.com/")
    prefix = f"https://raw.githubusercontent.com/{owner_repo}/main/"
    icon_url = TOOL_COMFY["Icon"]
    assert icon_url.startswith(prefix), icon_url
    path = icon_url.removeprefix(prefix)
    tracked = subprocess.run(["git", "ls-files", "--error-unmatch", path], cwd=REPO, capture_output=True)
    assert tracked.returncode == 0, f"{path} is not committed, so the URL would not resolve"
    with Image.open(REPO / path) as icon:
        assert icon.format in ("PNG", "JPEG", "GIF")
        assert icon.width == icon.height <= 400  # the registry takes at most 800x400
    assert (REPO / path).stat().st_size < 100_000


def _models_under(folder: str) -> dict[str, str]:
    """{file path under ``folder``: model_url} of the [tool.comfy].Models entries placed there."""
    return {m["location"].removeprefix(folder): m["model_url"] for m in TOOL_COMFY["Models"]
            if m["location"].startswith(folder)}


def test_models_list_the_default_aesthetic_predictor():
    from aesthete.scoring.registry import DEFAULT_PREDICTOR, KNOWN_PREDICTORS, REQUIRED_FILES, WEIGHT_FILES

    known = KNOWN_PREDICTORS[DEFAULT_PREDICTOR]
    files = _models_under(f"/aesthetic/{DEFAULT_PREDICTOR}/")
    weights = [f for f in files if f in WEIGHT_FILES]
    assert sorted(files) == sorted([*REQUIRED_FILES, *weights]) and len(weights) == 1, files
    for name, url in files.items():
        assert url == f"https://huggingface.co/{known.huggingface_id}/resolve/main/{name}"


def test_models_list_the_kolors_files_the_loader_downloads():
    """The registry's Kolors entries are exactly what kolors/download.py fetches (one list of files)."""
    from aesthete.kolors.download import FILE_PATTERNS, KOLORS_REPO, wanted_files

    files = _models_under("/kolors/Kolors/")
    for name, url in files.items():
        assert url == f"https://huggingface.co/{KOLORS_REPO}/resolve/main/{name}"
    assert sorted(wanted_files(list(files))) == sorted(files)
    for pattern in FILE_PATTERNS:
        assert any(fnmatch.fnmatchcase(name, pattern) for name in files), pattern
    shards = [n for n in files if re.fullmatch(r"text_encoder/pytorch_model-0000\d-of-00007\.bin", n)]
    assert len(shards) == 7
    assert all(m["location"].startswith(("/aesthetic/", "/kolors/")) for m in TOOL_COMFY["Models"])


def _runtime_files() -> list[str]:
    """The tracked files a user's ComfyUI uses: the top-level entry points and documents, and every file of the
    Python packages and data folders that pyproject.toml ships (so a new package, such as kolors/, counts)."""
    setuptools = PYPROJECT["tool"]["setuptools"]
    folders = {p.split(".", 2)[1] for p in setuptools["packages"] if p.count(".") >= 1}
    folders |= {pattern.split("/")[0] for pattern in setuptools["package-data"]["aesthete"]}
    top_level = {"__init__.py", "cli.py", "install.py", "requirements.txt", "pyproject.toml", "README.md",
                 "README_zh.md", "CHANGELOG.md"}
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    return sorted(f for f in tracked if f in top_level or f.split("/")[0] in folders)


def test_published_archive_holds_what_a_user_needs_and_nothing_else():
    names = packed_names()
    assert names == _runtime_files()
    for needed in ("__init__.py", "install.py", "requirements.txt", "pyproject.toml", "CHANGELOG.md",
                   "nodes/__init__.py", "locales/zh/nodeDefs.json", "web/aesthete_locale.js"):
        assert needed in names
    assert any(n.startswith("workflows/") and n.endswith(".json") for n in names)
    # development only: tests and their fixtures (a pickled .ckpt among them), the development kit, benchmarks,
    # scripts, docs, CI
    for name in names:
        assert not name.startswith(("tests/", "devkit/", "benchmarks/", "scripts/", "docs/", ".ci/", ".")), name
        assert not name.endswith((".ckpt", ".pt", ".pth", ".pkl", ".bin", ".zip", ".pyc")), name

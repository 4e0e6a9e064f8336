"""Installing the pack never downgrades what a user's environment already has: the declared requirements (what pip
would do with them runs in tests/install/test_pip_requirements.py), the README's install commands, the layer lint."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _requirement_names(lines) -> dict[str, str]:
    out = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            name = re.split(r"[<>=!~ \[;]", line, maxsplit=1)[0].lower().replace("_", "-")
            out[name] = line.replace(" ", "")
    return out


def test_requirements_mirror_pyproject_and_have_no_upper_bounds():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = _requirement_names(project["dependencies"])
    reqs = _requirement_names((ROOT / "requirements.txt").read_text().splitlines())
    assert deps == reqs
    for name, spec in deps.items():
        assert not re.search(r"(<|==|~=|!=)", spec), f"{spec}: an upper bound or pin could downgrade a user's {name}"
    # its metadata pins transformers<5: it must never be a declared dependency
    assert "simple-aesthetics-predictor" not in deps


def test_predictor_package_works_on_installed_transformers():
    from aesthetics_predictor import AestheticsPredictorV2Linear
    from transformers import CLIPVisionConfig

    model = AestheticsPredictorV2Linear(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                         num_attention_heads=4, image_size=32, patch_size=8,
                                                         projection_dim=16))
    import torch

    out = model(pixel_values=torch.zeros(2, 3, 32, 32))
    assert out.logits.shape == (2, 1)


def _install_commands(readme: str, heading: str) -> list[list[str]]:
    """The commands of each code block in a README's install section, without comments."""
    text = (ROOT / readme).read_text()
    section = text[text.index(heading):]
    section = section[:section.index("\n## ", 1)]
    blocks = re.findall(r"```[a-z]*\n(.*?)```", section, re.DOTALL)
    return [[re.sub(r"\s+#.*$", "", line).strip() for line in block.splitlines()] for block in blocks]


def test_chinese_readme_gives_the_same_install_commands():
    english = _install_commands("README.md", "## Install into an existing ComfyUI")
    chinese = _install_commands("README_zh.md", "## 安装到已有的 ComfyUI")
    assert len(english) >= 5  # venv, portable, desktop, pip check, undo
    assert [[line.replace("<文件夹>", "<folder>") for line in block] for block in chinese] == english


@pytest.mark.parametrize("path, banned", [("scoring/any.py", True), ("training/any.py", True), ("common/any.py", True),
                                          ("nodes/any.py", False)])
def test_lint_refuses_a_comfyui_import_in_domain_code(path, banned):
    """The layer rule (domain packages never import ComfyUI) is checked by ruff in `make test`, not only written down."""
    source = "import comfy.sd\nimport folder_paths\nfrom server import PromptServer\n"
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--stdin-filename", path, "-"], input=source,
                          text=True, capture_output=True, cwd=ROOT)
    flagged = proc.stdout.count("TID251")
    assert flagged == (3 if banned else 0), proc.stdout


@pytest.mark.parametrize("path", ["scoring/any.py", "training/any.py", "common/any.py", "kolors/any.py"])
def test_lint_refuses_a_devkit_import_in_the_pack(path):
    """The development kit is left out of the published archive, so the pack's packages never import it."""
    source = "import devkit.factories\nfrom devkit.graph import new_graph\n"
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--stdin-filename", path, "-"], input=source,
                          text=True, capture_output=True, cwd=ROOT)
    assert proc.stdout.count("TID251") == 2, proc.stdout

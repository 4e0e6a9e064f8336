"""The README's install steps for a venv ComfyUI, run for real.

A fresh virtual environment (no system site packages) gets what a user's ComfyUI already has: torch and ComfyUI's own
requirements. The archive the Comfy Registry would publish (`comfy node pack`) is unpacked where `git clone` would
put the pack, the README's venv block runs as written, and ComfyUI started with that venv's Python must list every
node and workflow of the pack. Then `pip check` must say what the README says, and the README's undo block must leave
the environment as it was. About 2 minutes and 6 GB of temporary disk (torch comes from pip's cache).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import requests

from harness.comfy_cli import pack
from devkit.comfy_server import COMFY_DIR, PACK_FOLDER_NAME, REPO, ComfyServer

pytestmark = pytest.mark.install
log = logging.getLogger("aesthete.tests.install")

README = (REPO / "README.md").read_text()
CLONE = "git clone https://github.com/aesthete-comfyui/comfyui-aesthete"


def readme_block(marker: str) -> str:
    """The fenced code block that follows the HTML comment holding ``marker``."""
    start = README.index(f"<!-- {marker}")
    return re.compile(r"```[a-z]*\n(.*?)```", re.DOTALL).search(README, start)[1]


def run(cmd: list[str] | str, cwd: Path, env: dict[str, str], timeout: float = 900) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          shell=isinstance(cmd, str), executable="/bin/bash" if isinstance(cmd, str) else None)
    if proc.returncode != 0:
        pytest.fail(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}", pytrace=False)
    return proc.stdout


def users_comfyui_venv(venv: Path, env: dict[str, str]) -> Path:
    """A venv as a ComfyUI user has it: torch (pinned as scripts/setup.sh pins it) and ComfyUI's requirements."""
    torch_pins = re.search(r'TORCH_PINS="([^"]+)"', (REPO / "scripts" / "setup.sh").read_text())[1].split()
    comfy_reqs = [line for line in (COMFY_DIR / "requirements.txt").read_text().splitlines()
                  if not re.fullmatch(r"(torch|torchvision|torchaudio)\s*", line)]
    reqs = venv.parent / "comfyui-requirements.txt"
    reqs.write_text("\n".join(comfy_reqs) + "\n")
    run([sys.executable, "-m", "venv", str(venv)], venv.parent, env)
    python = venv / "bin" / "python"
    # requests: ComfyUI's frontend manager imports it, and transformers 5 no longer brings it. --no-compile: Python
    # compiles what ComfyUI imports when it imports it; compiling all of torch up front took most of the time here.
    run([str(python), "-m", "pip", "install", "-q", "--no-compile", *torch_pins, "-r", str(reqs), "requests"],
        venv.parent, env)
    return python


def freeze(python: Path, env: dict[str, str]) -> list[str]:
    return run([str(python), "-m", "pip", "freeze"], python.parent, env).splitlines()


@pytest.fixture
def workdir(tmp_path):
    """tmp_path, minus the 6 GB venv afterwards (pytest keeps the last runs' tmp_path folders; ComfyUI's log stays)."""
    yield tmp_path
    shutil.rmtree(tmp_path / "ComfyUI" / "venv", ignore_errors=True)


def test_venv_install_as_the_readme_says(workdir):
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    comfyui = workdir / "ComfyUI"  # the user's ComfyUI folder; its code is the embedded ComfyUI
    (comfyui / "custom_nodes").mkdir(parents=True)
    python = users_comfyui_venv(comfyui / "venv", env)
    before = freeze(python, env)
    log.info("the user's ComfyUI venv is ready")

    # the README's venv steps, with the published archive unpacked where `git clone` would put the pack
    steps = readme_block("the venv steps")
    assert CLONE in steps and "python -m pip install -r requirements.txt" in steps and "python install.py" in steps
    pack_dir = comfyui / "custom_nodes" / PACK_FOLDER_NAME
    with zipfile.ZipFile(pack(workdir / "node.zip")) as archive:
        archive.extractall(pack_dir)
    run("set -euo pipefail\n" + steps.replace(CLONE, "test -f comfyui-aesthete/install.py"), workdir, env)
    added = sorted(set(freeze(python, env)) - set(before))
    log.info("the README's venv steps added %s", added)

    # ComfyUI started with that venv's Python lists every node and workflow of the pack
    node_ids = set(json.loads((pack_dir / "locales" / "en" / "nodeDefs.json").read_text()))
    workflows = sorted(p.stem for p in (pack_dir / "workflows").glob("*.json"))
    server = ComfyServer(base_dir=comfyui, python=str(python), link_pack=False)
    try:
        server.start()
        listed = requests.get(server.url + "/object_info", timeout=60).json()
        templates = requests.get(server.url + "/api/workflow_templates", timeout=60).json()
    finally:
        server.stop()
    log.info("ComfyUI ran with the installed pack")
    assert len(node_ids) >= 14
    missing = node_ids - set(listed)
    assert not missing, f"not listed at /object_info: {sorted(missing)}\n{server.log_tail()}"
    assert {listed[n]["python_module"] for n in node_ids} == {f"custom_nodes.{PACK_FOLDER_NAME}"}
    assert sorted(templates[PACK_FOLDER_NAME]) == workflows

    # pip check names exactly the conflict the README explains
    check = subprocess.run([str(python), "-m", "pip", "check"], env=env, capture_output=True, text=True, timeout=300)

    def version_free(text):
        return re.sub(r"you have transformers \S+\.", "you have transformers X.", text).strip().splitlines()

    assert version_free(check.stdout) == version_free(readme_block("what pip check reports")), check.stdout

    # the README's undo leaves the environment as it was before the pack came
    shutil.rmtree(pack_dir)  # the README has the folder deleted by hand
    run("set -euo pipefail\nsource ComfyUI/venv/bin/activate\n" + readme_block("undoing the venv steps"), workdir,
        env)
    after = freeze(python, env)
    assert after == before, (f"the pack added {added}; the README's undo leaves "
                             f"{sorted(set(after) - set(before))} and removes {sorted(set(before) - set(after))}")

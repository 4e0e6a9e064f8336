"""Regenerate Aesthete's example workflows: workflows/<name>.json (UI format, listed by ComfyUI's Templates dialog),
workflows/<name>.jpg (its thumbnail), workflows/api/<name>.json (the API format the frontend itself makes from the
UI file) and docs/images/<first workflow>.jpg (the README screenshot).

Every file is made by the real frontend: this script starts the embedded ComfyUI with the pack, opens it in headless
Chromium, builds each workflow from its spec (scripts/workflow_specs.py, workflow_specs_kolors.py), loads the result
back with app.loadGraphData and writes app.graphToPrompt(). Run it again whenever a node's inputs or outputs change:

    .venv/bin/python -m scripts.build_workflows [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

import requests

from aesthete.common.files import write_atomic
from devkit.browser import Frontend
from devkit.comfy_server import ComfyServer
from devkit.workflow_builder import WorkflowSpec, build_in_frontend, screenshot_graph

from .workflow_specs import (generate_score_rank, kolors_generate_score_rank, pick_the_best_epoch, score_a_folder,
                             the_recipe, train_then_compare, use_a_diffsynth_lora)
from .workflow_specs_kolors import kolors_controlnet, kolors_img2img, kolors_inpainting, kolors_ip_adapter

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS_DIR = REPO / "workflows"
API_DIR = WORKFLOWS_DIR / "api"
DOCS_IMAGES = REPO / "docs" / "images"


SPECS = (generate_score_rank, score_a_folder, train_then_compare, use_a_diffsynth_lora,
         kolors_generate_score_rank, the_recipe, kolors_img2img, kolors_inpainting, kolors_controlnet,
         kolors_ip_adapter, pick_the_best_epoch)


def drop_absent_optional_widgets(spec: WorkflowSpec, object_info: dict) -> None:
    """Widgets written "?name" are set when the node has an input of that name, and left out otherwise."""
    for node in spec.nodes:
        info = object_info.get(node.type, {}).get("input", {})
        names = set(info.get("required", {})) | set(info.get("optional", {}))
        node.widgets = {k.lstrip("?"): v for k, v in node.widgets.items() if not k.startswith("?") or k[1:] in names}


def write_json(path: Path, data: dict) -> None:
    write_atomic(path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")


def screenshot_jpeg(page, path: Path, quality: int = 80) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.jpg")
    screenshot_graph(page, tmp, jpeg_quality=quality)
    os.replace(tmp, path)


def build_all(names: set[str] | None = None) -> list[Path]:
    from playwright.sync_api import sync_playwright

    written: list[Path] = []
    base = Path(tempfile.mkdtemp(prefix="aesthete-workflows-"))
    server = ComfyServer(base_dir=base)
    try:
        server.start()
        object_info = requests.get(server.url + "/object_info", timeout=60).json()
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/lib/chromium/chromium", headless=True, args=[
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"])
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            frontend = Frontend(page, server.url)
            frontend.open()
            for make in SPECS:
                spec = make()
                if names and spec.name not in names:
                    continue
                drop_absent_optional_widgets(spec, object_info)
                ui = build_in_frontend(page, spec)
                ui.pop("extra", None)  # the canvas view of this session
                ui["id"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"aesthete/workflows/{spec.name}"))  # stable across builds
                loaded = frontend.load_workflow(ui)
                if loaded["missing"]:
                    raise RuntimeError(f"{spec.name}: the frontend lacks {loaded['missing']}")
                api = frontend.graph_to_prompt()
                ui_path, api_path = WORKFLOWS_DIR / f"{spec.name}.json", API_DIR / f"{spec.name}.json"
                write_json(ui_path, ui)
                write_json(api_path, api)
                thumb = WORKFLOWS_DIR / f"{spec.name}.jpg"
                screenshot_jpeg(page, thumb)
                written += [ui_path, api_path, thumb]
                if make is SPECS[0]:
                    DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(thumb, DOCS_IMAGES / f"workflow-{spec.name}.jpg")
                    written.append(DOCS_IMAGES / f"workflow-{spec.name}.jpg")
                sys.stderr.write(f"{spec.name}: {len(ui['nodes'])} nodes, {len(api)} in the API graph\n")
            browser.close()
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", help="build only these workflows (names without .json)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for path in build_all(set(args.only) if args.only else None):
        sys.stderr.write(f"wrote {path.relative_to(REPO)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

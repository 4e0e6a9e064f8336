"""Shared fixtures: one real ComfyUI server per test session, its client, test models, a headless browser."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from devkit.client import ComfyClient
from harness.servers import running_test_server

ARTIFACTS = Path(__file__).resolve().parent / ".artifacts"

# no hub is reachable here: fail fast instead of 30-70 s of retries
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


# every test in these folders gets these marks, so `-m "not comfy"` starts no server, `-m "not browser"` no browser,
# `-m "not ray"` no Ray cluster, `-m "not slow"` builds no full-size model, `-m "not process"` starts no fresh Python,
# `-m "not reference"` no reference package (tests/reference: our scorers against DiffSynth's and the publishers'
# packages, full-size models where a reference hard-codes them); tests/unit is the fast, ComfyUI-free rest (domain code
# only)
FOLDER_MARKS = {"comfy": ("comfy",), "browser": ("browser", "comfy"), "install": ("install", "comfy"),
                "ray": ("ray",), "full_size": ("slow",), "processes": ("process",), "reference": ("reference",)}


def pytest_collection_modifyitems(config, items):
    tests = Path(__file__).resolve().parent
    for item in items:
        path = Path(str(item.fspath)).resolve()
        folder = path.relative_to(tests).parts[0] if path.is_relative_to(tests) else ""
        for mark in FOLDER_MARKS.get(folder, ()):
            item.add_marker(mark)


def fail_start(message: str) -> None:
    pytest.fail(message, pytrace=False)


@pytest.fixture(scope="session")
def comfy_server():
    with running_test_server("aesthete-comfy-", ARTIFACTS / "comfyui.log", on_start_error=fail_start) as server:
        yield server


@pytest.fixture(scope="session")
def comfy(comfy_server) -> ComfyClient:
    return ComfyClient(comfy_server.url)


@pytest.fixture(scope="session")
def sd15_ckpt(comfy_server) -> str:
    """File name (as CheckpointLoaderSimple lists it) of the small random-weight SD1.5 checkpoint."""
    from devkit.factories import small_sd15_checkpoint

    return comfy_server.link_model("checkpoints", small_sd15_checkpoint(), "aesthete-test-sd15.safetensors")


@pytest.fixture(scope="session")
def tiny_predictor(comfy_server) -> str:
    """Folder name under models/aesthetic/ of the tiny random-weight aesthetic predictor."""
    from devkit.factories import aesthetic_predictor

    return comfy_server.link_model("aesthetic", aesthetic_predictor("tiny"), "aesthete-test-tiny")


@pytest.fixture(scope="session")
def chromium():
    """Debian's Chromium driven by Python playwright (no browser download)."""
    playwright = pytest.importorskip("playwright.sync_api")
    exe = next((p for p in ("/usr/lib/chromium/chromium", "/usr/bin/chromium") if os.path.exists(p)), None)
    if exe is None:
        pytest.fail("Chromium is not installed: run scripts/setup.sh --test (make test does)", pytrace=False)
    # playwright gives every launch a fresh, temporary profile (it refuses --user-data-dir here)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        yield browser
        browser.close()


@pytest.fixture()
def frontend(chromium, comfy_server):
    """The real ComfyUI frontend open in a fresh page; ``.errors`` collects console errors and page errors."""
    from devkit.browser import Frontend

    page = chromium.new_page(viewport={"width": 1600, "height": 1000})
    fe = Frontend(page, comfy_server.url)
    fe.open()
    yield fe
    page.close()

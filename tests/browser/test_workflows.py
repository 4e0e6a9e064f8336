"""The example workflows in workflows/: ComfyUI lists them as templates, the real frontend opens them cleanly and turns
them into exactly the committed API copies, and each API graph runs end to end on the test models.

For the runs, the model names are swapped for the test models (the small random SD1.5 checkpoint, the tiny
predictor, the tiny Kolors folder, for the LoRA the small Kolors folder whose UNet has the SDXL block layout and
DiffSynth's own Kolors LoRA fixture) and the graphs are made cheap for a CPU: 64x64 latents, 2 sampling steps, smaller
batches where the workflow has 4, 64 px training. Everything else runs as committed: the batch of 8, the top 3, the
dataset's bar of 6 (the tiny predictor is rescaled onto it), 5 epochs, alpha 4. Rebuild the workflows with
scripts/build_workflows.py.
"""

from __future__ import annotations

import io
import json
import math
import re
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

from devkit.workflow_builder import screenshot_graph

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / "workflows"
API_DIR = WORKFLOWS / "api"
ARTIFACTS = Path(__file__).resolve().parents[1] / ".artifacts"
# a Kolors LoRA written by DiffSynth-Studio 1.x's own trainer code (scripts/make_diffsynth_fixtures.py): rank 4,
# no alpha, blocks.7 attention of the SDXL layout at 320 channels with 2048-wide text, as small_kolors's UNet
DIFFSYNTH_FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "diffsynth" / "tiny_kolors_lora.ckpt"
PACK = "comfyui-aesthete"
NAMES = sorted(["1-generate-score-rank", "2-score-a-folder", "3-train-then-compare", "4-use-a-diffsynth-lora",
                "5-kolors-generate-score-rank", "6-the-recipe", "7-kolors-img2img", "8-kolors-inpainting",
                "9-kolors-controlnet-canny", "10-kolors-ip-adapter", "11-pick-the-best-epoch"])  # as the templates API lists them
DATASET = "lora_dataset"  # the folder workflows 2 and 3 read under ComfyUI's input directory
# the frontend fetches from the internet, which CI machines may not reach: those failures are not the workflow's
OFFLINE = re.compile(r"net::ERR_(NAME_NOT_RESOLVED|INTERNET_DISCONNECTED|CONNECTION_REFUSED|ADDRESS_UNREACHABLE)")
# widgets naming model files the user provides: their values need not be on this server
MODEL_FILE_WIDGETS = {"ckpt_name", "lora_name", "unet_name", "control_net_name", "ipadapter_name", "clip_name",
                      "image"}


def ui_workflow(name: str) -> dict:
    return json.loads((WORKFLOWS / f"{name}.json").read_text(encoding="utf-8"))


def api_workflow(name: str) -> dict:
    return json.loads((API_DIR / f"{name}.json").read_text(encoding="utf-8"))


def node_ids(graph: dict, class_type: str, title: str | None = None) -> list[str]:
    """Ids of the API graph's nodes of ``class_type`` (whose title contains ``title``), in id order."""
    return sorted((k for k, v in graph.items() if v["class_type"] == class_type
                   and (title is None or title in v.get("_meta", {}).get("title", ""))), key=int)


def one(graph: dict, class_type: str, title: str | None = None) -> str:
    ids = node_ids(graph, class_type, title)
    assert len(ids) == 1, f"expected one {class_type} ({title}) in the graph, found {ids}"
    return ids[0]


def for_test_models(graph: dict, ckpt: str, predictor: str, lora: str | None = None, kolors: str | None = None) -> dict:
    """The graph with the user's model names swapped for the test models, and the sampling made CPU-cheap."""
    graph = json.loads(json.dumps(graph))
    for node in graph.values():
        inputs, kind = node["inputs"], node["class_type"]
        if kind == "CheckpointLoaderSimple":
            inputs["ckpt_name"] = ckpt
        elif kind == "AesthetePredictorLoader":
            inputs["model"] = predictor
        elif kind == "AestheteLoraLoader":
            inputs["lora_name"] = lora
        elif kind == "AestheteKolorsLoader":
            inputs["kolors"] = kolors
        elif kind == "EmptyLatentImage":  # 64x64, and at most 2 images where the workflow makes 4
            inputs.update(width=64, height=64, batch_size=inputs["batch_size"] if inputs["batch_size"] == 8 else 2)
        elif kind == "KSampler":
            inputs["steps"] = 2
        elif kind == "AestheteLoraDataset":
            inputs["resolution"] = 64
    return graph


def summary_scores(text: str) -> list[float]:
    """The per-image scores of an Aesthetic Score node's text ('#0: 5.123' lines)."""
    return [float(s) for s in re.findall(r"^#\d+: (-?\d+\.\d+)$", text, re.M)]


def ui_text(result, node_id: str) -> str:
    return "\n".join(result.node_output(node_id).get("text", []))


def run_everything(comfy, graph: dict, timeout: float):
    """Run ``graph`` and check that every node ran: ComfyUI runs the valid outputs of a graph with validation errors
    elsewhere and still reports success."""
    result = comfy.run(graph, timeout=timeout)
    ran = {str(e["data"]["node"]) for e in result.events_of("executing") if e["data"].get("node") is not None}
    ran |= {str(n) for e in result.events_of("execution_cached") for n in e["data"].get("nodes", [])}
    assert ran == set(graph), f"nodes that never ran (a validation error?): {sorted(set(graph) - ran, key=int)}"
    return result


def write_dataset(folder: Path, count: int = 6) -> list[Path]:
    """``count`` 64x64 images, each a different pattern and palette (so their scores spread), with .txt captions,
    and one broken PNG that scoring and the dataset must skip."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    paths = []
    yy, xx = np.mgrid[0:64, 0:64]
    for i in range(count):
        a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        mask = ((xx * (i + 1) + yy * (count - i)) // (4 + 3 * i)) % 2
        pixels = np.where(mask[..., None] == 1, a, b) + rng.normal(0, 8 * i, (64, 64, 3))
        path = folder / f"image_{i:02d}.png"
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path)
        path.with_suffix(".txt").write_text(f"pattern {i}, stripes, colorful")
        paths.append(path)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png")
    return paths


@pytest.fixture(scope="module")
def dataset(comfy_server) -> list[Path]:
    return write_dataset(comfy_server.input_dir / DATASET)


@pytest.fixture(scope="module")
def catalog_scorers(comfy_server) -> None:
    """The catalog's CLIPScore ViT-L/14 (the judge's prompt-aware scorer in workflows 1 and 6) and PickScore, tiny
    random weights in DiffSynth's layout under models/QualityMetric."""
    from devkit.scorer_models import tiny_clip_scorers_root

    for folder in sorted((tiny_clip_scorers_root() / "QualityMetric").iterdir()):
        comfy_server.link_model("QualityMetric", folder)


@pytest.fixture(scope="module")
def tiny_kolors_folder(comfy_server) -> str:
    """The tiny Kolors (repository layout, fp16) as the Kolors Loader lists it under models/kolors."""
    from devkit.kolors_models import tiny_kolors

    return comfy_server.link_model("kolors", tiny_kolors("kolors", "fp16"), "aesthete-tiny-kolors")


@pytest.fixture(scope="module")
def small_kolors_folder(comfy_server) -> str:
    """The small Kolors whose UNet has the full SDXL block layout (DiffSynth Kolors LoRAs fit it)."""
    from devkit.kolors_models import small_kolors

    return comfy_server.link_model("kolors", small_kolors(), "aesthete-small-kolors")


def test_templates_api_lists_and_serves_the_workflows(comfy):
    listed = comfy.get("/api/workflow_templates").json()
    assert sorted(listed.get(PACK, [])) == NAMES  # the API copies in workflows/api/ are not templates
    for name in NAMES:
        assert comfy.get(f"/api/workflow_templates/{PACK}/{name}.json").json() == ui_workflow(name)
        thumb = comfy.get(f"/api/workflow_templates/{PACK}/{name}.jpg").content
        assert thumb[:3] == b"\xff\xd8\xff" and len(thumb) < 300_000, f"{name}.jpg: not a JPEG under 300 KB"


def test_templates_dialog_shows_the_workflows(frontend):
    """The frontend's own Templates dialog lists the pack's workflows (as a user opens it from the sidebar)."""
    page = frontend.page
    page.get_by_role("button", name=re.compile("Templates")).first.click()
    page.get_by_text(PACK).or_(page.get_by_text("Aesthete")).first.click(timeout=30_000)
    for name in NAMES:
        page.get_by_text(name).first.wait_for(timeout=30_000)
    frontend.screenshot(ARTIFACTS / "workflows-templates-dialog.png")


WIDGET_PROBLEMS_JS = """
() => window.app.graph._nodes.flatMap(n => (n.widgets || []).flatMap(w => {
  const o = w.options || {};
  const values = typeof o.values === 'function' ? o.values() : o.values;
  if (w.type === 'combo' && Array.isArray(values) && !values.includes(w.value))
    return [[n.type, w.name, w.value, 'not one of ' + values.slice(0, 8).join(', ')]];
  if (typeof w.value === 'number' && (w.value < o.min || w.value > o.max || Number.isNaN(w.value)))
    return [[n.type, w.name, w.value, `outside ${o.min}..${o.max}`]];
  return [];
}))
"""

LAYOUT_JS = """
() => ({
  notes: window.app.graph._nodes.filter(n => n.type === 'Note').map(n => n.widgets[0].value),
  groups: (window.app.graph._groups || window.app.graph.groups).map(g => [g.title, g.pos[0], g.pos[1]]),
  models: window.app.graph._nodes.flatMap(n => (n.widgets || [])
    .filter(w => ['ckpt_name', 'lora_name'].includes(w.name) || (n.type === 'AesthetePredictorLoader' && w.name === 'model')
                 || (n.type === 'AestheteKolorsLoader' && w.name === 'kolors'))
    .map(w => w.value)),
  controls: window.app.graph._nodes.flatMap(n => (n.widgets || []).filter(w => w.name === 'control_after_generate')
                                                               .map(w => [n.type, w.value])),
})
"""


@pytest.fixture(scope="module")
def example_picture(comfy_server) -> None:
    """input/example.png, the picture every ComfyUI install ships (Load Image's default, used by workflows 7-10)."""
    from devkit.comfy_server import COMFY_DIR

    if not (comfy_server.input_dir / "example.png").exists():
        shutil.copyfile(COMFY_DIR / "input" / "example.png", comfy_server.input_dir / "example.png")


@pytest.mark.parametrize("name", NAMES)
def test_workflow_opens_cleanly_and_converts_to_its_api_copy(frontend, example_picture, name):
    before = len(frontend.errors)
    loaded = frontend.load_workflow(ui_workflow(name))
    frontend.page.wait_for_timeout(500)  # errors of widgets drawn after the load
    assert loaded["missing"] == []
    assert loaded["count"] == len(ui_workflow(name)["nodes"])
    assert [e for e in frontend.errors[before:] if not OFFLINE.search(e)] == []
    problems = [p for p in frontend.page.evaluate(WIDGET_PROBLEMS_JS) if p[1] not in MODEL_FILE_WIDGETS]
    assert problems == []
    layout = frontend.page.evaluate(LAYOUT_JS)
    assert len(layout["notes"]) == 1 and layout["models"]
    assert [m for m in layout["models"] if f"/{m}" not in layout["notes"][0]] == []  # the note says where each goes
    assert len(layout["groups"]) >= 3 and [g[1] for g in layout["groups"]] == sorted(g[1] for g in layout["groups"])
    assert all(value == "fixed" for _, value in layout["controls"]), layout["controls"]
    # the committed API copy is exactly what the frontend makes of the UI file
    assert frontend.graph_to_prompt() == api_workflow(name)
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot_graph(frontend.page, ARTIFACTS / f"workflow-{name}.png")


def test_generate_score_rank_runs(comfy, comfy_server, sd15_ckpt, tiny_predictor, catalog_scorers):
    graph = for_test_models(api_workflow("1-generate-score-rank"), sd15_ckpt, tiny_predictor)
    save_id = one(graph, "AestheteSaveScored", "Best")
    prefix = f"wf1-{uuid.uuid4().hex[:8]}/best"
    graph[save_id]["inputs"]["filename_prefix"] = prefix  # a folder of its own in the shared output directory
    assert graph[one(graph, "EmptyLatentImage")]["inputs"]["batch_size"] == 8
    assert graph[one(graph, "AestheteRank")]["inputs"]["top_k"] == 3

    result = run_everything(comfy, graph, timeout=300)

    scores = summary_scores(ui_text(result, one(graph, "AestheteScore")))
    assert len(scores) == 8 and all(math.isfinite(s) for s in scores)
    previews = result.node_output(one(graph, "AestheteSaveScored", "All"))["images"]
    assert len(previews) == 8 and all(p["type"] == "temp" for p in previews)
    saved = sorted((comfy_server.output_dir / prefix).parent.glob("best_*.png"))
    assert len(saved) == 3 and len(result.node_output(save_id)["images"]) == 3
    from aesthete.scoring.annotate import read_score

    saved_scores = [read_score(p) for p in saved]  # counter order = rank order
    assert saved_scores == sorted(saved_scores, reverse=True)
    assert saved_scores == pytest.approx(sorted(scores, reverse=True)[:3], abs=1e-3)
    # the judge: the LAION head and CLIPScore against the composer's prompt, each scorer's score kept in the PNG
    score_node = graph[one(graph, "AestheteScore")]["inputs"]
    assert score_node["predictor"][0] == one(graph, "AestheteJudge")
    assert score_node["prompt"][0] == one(graph, "AesthetePromptComposer")
    for path in saved:
        with Image.open(path) as im:
            assert set(json.loads(im.text["aesthetic_scores"])) == {tiny_predictor, "clipscore-vit-l-14"}
    write_ranked_grid(comfy, previews, scores, ARTIFACTS / "generate-score-rank-grid.png")


def write_ranked_grid(comfy, previews: list[dict], scores: list[float], path: Path, zoom: int = 3) -> None:
    """The 8 previews (score drawn on each), best first, four a row, in one picture for the README."""
    images = [Image.open(io.BytesIO(comfy.fetch_file(p["filename"], p["subfolder"], p["type"]))).convert("RGB")
              for p in previews]
    w, h = images[0].width * zoom, images[0].height * zoom
    grid = Image.new("RGB", (w * 4 + 5 * 8, h * 2 + 3 * 8), "white")
    for slot, i in enumerate(sorted(range(len(images)), key=lambda i: -scores[i])):
        tile = images[i].resize((w, h), Image.NEAREST)
        grid.paste(tile, (8 + (slot % 4) * (w + 8), 8 + (slot // 4) * (h + 8)))
    path.parent.mkdir(exist_ok=True)
    grid.save(path)


def test_score_a_folder_runs(comfy, dataset, tiny_predictor):
    graph = for_test_models(api_workflow("2-score-a-folder"), "", tiny_predictor)
    folder_id = one(graph, "AestheteScoreFolder")
    assert graph[folder_id]["inputs"]["folder"] == DATASET

    result = run_everything(comfy, graph, timeout=300)

    table = ui_text(result, one(graph, "PreviewAny", "Per-file"))
    rows = [line.split("\t") for line in table.splitlines() if line.strip()]
    assert sorted(r[1] for r in rows) == sorted(p.name for p in dataset)
    scores = [float(r[0]) for r in rows]
    mean = float(ui_text(result, one(graph, "PreviewAny", "Mean")))
    assert mean == pytest.approx(sum(scores) / len(scores), abs=1e-3)
    assert int(ui_text(result, one(graph, "PreviewAny", "Images scored"))) == len(dataset)
    skipped = ui_text(result, one(graph, "PreviewAny", "Skipped"))
    skipped_images = [line.split(":")[0] for line in skipped.splitlines() if not line.split(":")[0].endswith(".txt")]
    assert skipped_images == ["broken.png"], skipped
    assert "broken.png" in ui_text(result, folder_id)  # the node's own view: summary, table and skipped files


def dataset_scores(predictor_folder: Path, paths: list[Path]) -> list[float]:
    """The images' scores by the scoring library itself."""
    from aesthete.scoring.predictor import load_predictor

    model = load_predictor(predictor_folder, "cpu", "fp32")
    return model.score_images([Image.open(p).convert("RGB") for p in paths])


@pytest.fixture(scope="module")
def predictor_for_the_bar(comfy_server, tiny_predictor, dataset) -> tuple[str, int]:
    """The tiny random predictor with its last (linear) layer rescaled so the test images spread over 5 points and
    only the best two reach the bar of 6 (a random predictor scores in the hundreds; two images keep the training
    short). Returns its folder name and how many images reach 6."""
    import torch
    from safetensors.torch import load_file, save_file

    source = (comfy_server.models_dir / "aesthetic" / tiny_predictor).resolve()
    scores = sorted(dataset_scores(source, dataset))
    scale = 5.0 / (scores[-1] - scores[0])
    assert scale * (scores[-2] - scores[-3]) > 0.01, f"the test images score too closely to split: {scores}"
    shift = 6.0 - scale * (scores[-3] + scores[-2]) / 2
    name = "aesthete-test-tiny-bar6"
    target = comfy_server.models_dir / "aesthetic" / name
    shutil.copytree(source, target, dirs_exist_ok=True)
    weights = load_file(target / "model.safetensors")
    last = max((k for k in weights if k.startswith("layers.") and k.endswith(".weight") and weights[k].shape[0] == 1),
               key=lambda k: int(k.split(".")[1]))
    weights[last] = weights[last] * scale
    bias = last[:-len("weight")] + "bias"
    weights[bias] = weights[bias] * scale + torch.tensor(shift, dtype=weights[bias].dtype)
    save_file(weights, target / "model.safetensors", metadata={"format": "pt"})
    return name, sum(scale * s + shift >= 6.0 for s in scores)


def test_train_then_compare_runs(comfy, comfy_server, dataset, sd15_ckpt, predictor_for_the_bar):
    predictor, kept = predictor_for_the_bar
    graph = for_test_models(api_workflow("3-train-then-compare"), sd15_ckpt, predictor)
    data_id, train_id, save_id = one(graph, "AestheteLoraDataset"), one(graph, "AestheteTrainLora"), \
        one(graph, "AestheteSaveLora")
    train = graph[train_id]["inputs"]
    assert (train["epochs"], train["alpha"], graph[data_id]["inputs"]["min_score"]) == (5, 4.0, 6.0)
    prefix = f"aesthete_test/wf3_{uuid.uuid4().hex[:8]}"
    graph[save_id]["inputs"]["name_prefix"] = prefix

    result = run_everything(comfy, graph, timeout=500)

    report = ui_text(result, data_id)
    assert f"{kept} images kept, {len(dataset) - kept + 1} skipped" in report, report
    assert len(re.findall(r"^skipped \S+: aesthetic score", report, re.M)) == len(dataset) - kept, report
    assert "skipped broken.png" in report
    lora_file = comfy_server.models_dir / "loras" / f"{prefix}_00001.safetensors"
    assert lora_file.is_file(), ui_text(result, save_id)
    with safe_open(str(lora_file), "pt") as f:
        meta, keys = f.metadata(), list(f.keys())
    assert meta["aesthete.epochs"] == "5" and any(k.endswith(".alpha") for k in keys)
    losses = result.node_output(train_id).get("loss", [])
    assert len(losses) == 5 * kept and all(math.isfinite(v) for v in losses)
    for side in ("without", "with LoRA"):
        side_scores = summary_scores(ui_text(result, one(graph, "AestheteScore", f"Score {side}")))
        mean = float(ui_text(result, one(graph, "PreviewAny", f"Mean {side}")))
        assert len(side_scores) == 2 and mean == pytest.approx(sum(side_scores) / 2, abs=1e-3)
        assert len(result.node_output(one(graph, "AestheteSaveScored", f"Images {side}"))["images"]) == 2


def test_use_a_diffsynth_lora_runs(comfy, comfy_server, small_kolors_folder, tiny_predictor):
    lora = f"aesthete-test-diffsynth-kolors-{uuid.uuid4().hex[:8]}.ckpt"  # DiffSynth 1.x's own Lightning checkpoint
    (comfy_server.models_dir / "loras").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(DIFFSYNTH_FIXTURE, comfy_server.models_dir / "loras" / lora)
    graph = for_test_models(api_workflow("4-use-a-diffsynth-lora"), "", tiny_predictor, lora, small_kolors_folder)
    lora_id, save_id = one(graph, "AestheteLoraLoader"), one(graph, "AestheteSaveScored")
    assert graph[lora_id]["inputs"]["alpha"] == 4.0
    assert graph[lora_id]["inputs"]["model"][0] == one(graph, "AestheteKolorsLoader")
    prefix = f"wf4-{uuid.uuid4().hex[:8]}/lora"
    graph[save_id]["inputs"]["filename_prefix"] = prefix
    # one image: the small Kolors UNet has SDXL's 70 transformer blocks, each reading 256 context tokens
    graph[one(graph, "EmptyLatentImage")]["inputs"]["batch_size"] = 1

    result = run_everything(comfy, graph, timeout=400)

    import torch

    tensors = len(torch.load(DIFFSYNTH_FIXTURE, map_location="cpu", weights_only=True))
    report = ui_text(result, lora_id)
    assert "DiffSynth" in report and f"Applied {tensors} of {tensors} tensors" in report, report  # every one placed
    scores = summary_scores(ui_text(result, one(graph, "AestheteScore")))
    assert len(scores) == 1 and all(math.isfinite(s) for s in scores)
    from aesthete.scoring.annotate import read_score

    saved = sorted((comfy_server.output_dir / prefix).parent.glob("lora_*.png"))
    assert [read_score(p) for p in saved] == pytest.approx(scores, abs=1e-3)


def test_kolors_generate_score_rank_runs(comfy, comfy_server, tiny_kolors_folder, tiny_predictor):
    from devkit.kolors_models import RECIPE_PROMPT

    graph = for_test_models(api_workflow("5-kolors-generate-score-rank"), "", tiny_predictor, kolors=tiny_kolors_folder)
    save_id, composer_id = one(graph, "AestheteSaveScored", "Best"), one(graph, "AesthetePromptComposer")
    prefix = f"wf5-{uuid.uuid4().hex[:8]}/best"
    graph[save_id]["inputs"]["filename_prefix"] = prefix
    assert graph[one(graph, "AestheteNegativePrompt")]["inputs"]["preset"] == "recipe-zh"
    assert graph[one(graph, "AestheteRank")]["inputs"]["top_k"] == 1
    assert graph[one(graph, "EmptyLatentImage")]["inputs"]["batch_size"] == 2  # the workflow's 4, made cheap

    result = run_everything(comfy, graph, timeout=300)

    # the composer writes the recipe's prompt exactly and counts its tokens with Kolors's own tokenizer
    composed = ui_text(result, composer_id)
    assert composed.split("\n")[0] == RECIPE_PROMPT, composed
    assert re.search(r"chatglm3: \d+ of 254 tokens", composed), composed
    negative = one(graph, "CLIPTextEncode", "Negative")
    assert graph[negative]["inputs"]["text"][0] == one(graph, "AestheteNegativePrompt")
    assert graph[one(graph, "KSampler")]["inputs"]["model"][0] == one(graph, "AestheteKolorsLoader")
    scores = summary_scores(ui_text(result, one(graph, "AestheteScore")))
    assert len(scores) == 2 and all(math.isfinite(s) for s in scores)
    previews = result.node_output(one(graph, "AestheteSaveScored", "All"))["images"]
    assert len(previews) == 2 and all(p["type"] == "temp" for p in previews)
    saved = sorted((comfy_server.output_dir / prefix).parent.glob("best_*.png"))
    assert len(saved) == 1 and len(result.node_output(save_id)["images"]) == 1
    from aesthete.scoring.annotate import read_score

    assert read_score(saved[0]) == pytest.approx(max(scores), abs=1e-3)


def test_the_recipe_runs(comfy, comfy_server, dataset, tiny_kolors_folder, predictor_for_the_bar, catalog_scorers):
    """Workflow 6 on the tiny Kolors: the dataset filtered at 6, Train LoRA with validation (2 epochs, one 64 px
    image per epoch, 1 step), the best epoch saved, then both batches scored and their means shown."""
    from devkit.kolors_models import RECIPE_PROMPT

    predictor, kept = predictor_for_the_bar
    graph = for_test_models(api_workflow("6-the-recipe"), "", predictor, kolors=tiny_kolors_folder)
    data_id, train_id, save_id = one(graph, "AestheteLoraDataset"), one(graph, "AestheteTrainLora"), \
        one(graph, "AestheteSaveLora")
    valid_id = one(graph, "AestheteValidationSettings")
    train, valid = graph[train_id]["inputs"], graph[valid_id]["inputs"]
    assert (train["epochs"], train["rank"], train["alpha"], graph[data_id]["inputs"]["min_score"]) == (5, 16, 4.0, 6.0)
    assert valid["prompts"] == RECIPE_PROMPT and valid["output_lora"] == "best score"
    judge = graph[valid["predictor"][0]]  # validation picks by looks AND prompt alignment (no style collapse)
    assert judge["class_type"] == "AestheteJudge" and judge["inputs"]["scorer_1"][0] == one(
        graph, "AesthetePredictorLoader") and judge["inputs"]["scorer_2"][0] == one(graph, "AestheteScorerLoader")
    assert graph[data_id]["inputs"]["aesthetic_model"][0] == one(graph, "AesthetePredictorLoader")  # the bar of 6
    assert train["model"][0] == one(graph, "AestheteKolorsLoader") and train["validation"][0] == valid_id
    assert graph[one(graph, "KSampler", "with LoRA")]["inputs"]["model"] == [train_id, 0]
    run_id = uuid.uuid4().hex[:8]
    train.update(epochs=2, checkpoint_name=f"aesthete_test/wf6_{run_id}")  # made cheap: 2 epochs
    valid.update(width=64, height=64, steps=1, images_per_prompt=1)
    prefix = f"aesthete_test/wf6_{run_id}_best"
    graph[save_id]["inputs"]["name_prefix"] = prefix

    result = run_everything(comfy, graph, timeout=500)

    report = ui_text(result, data_id)
    assert f"{kept} images kept" in report, report
    epochs = result.node_output(train_id)["validation"]
    assert [e["epoch"] for e in epochs] == [1, 2] and all(len(e["scores"]) == 1 for e in epochs), epochs
    assert all(list(e["scorer_scores"]) == [predictor, "clipscore-vit-l-14"] for e in epochs), epochs
    means = [sum(e["scores"]) / len(e["scores"]) for e in epochs]
    best = epochs[max(range(2), key=lambda i: (means[i], -i))]
    train_report = ui_text(result, train_id)
    assert f"output: epoch {best['epoch']} (best mean score" in train_report, train_report
    assert train_report == ui_text(result, one(graph, "PreviewAny", "Training report"))
    # Save LoRA wrote the best epoch's LoRA: the same tensors as the epoch's own file
    lora_file = comfy_server.models_dir / "loras" / f"{prefix}_00001.safetensors"
    assert lora_file.is_file(), ui_text(result, save_id)
    epoch_file = comfy_server.models_dir / "loras" / best["lora"]
    with safe_open(str(lora_file), "pt") as saved, safe_open(str(epoch_file), "pt") as chosen:
        assert sorted(saved.keys()) == sorted(chosen.keys()) and any(k.endswith(".alpha") for k in saved.keys())
        assert all(np.allclose(saved.get_tensor(k).float().numpy(), chosen.get_tensor(k).float().numpy())
                   for k in saved.keys())
    for title in ("Validation grid", "Score per epoch"):
        assert len(result.node_output(one(graph, "PreviewImage", title))["images"]) == 1, title
    for side in ("without", "with LoRA"):
        side_scores = summary_scores(ui_text(result, one(graph, "AestheteScore", f"Score {side}")))
        mean = float(ui_text(result, one(graph, "PreviewAny", f"Mean {side}")))
        assert len(side_scores) == 2 and mean == pytest.approx(sum(side_scores) / 2, abs=1e-3)
        assert len(result.node_output(one(graph, "AestheteSaveScored", f"Images {side}"))["images"]) == 2


def test_pick_the_best_epoch_runs(comfy, comfy_server, tiny_kolors_folder, tiny_predictor, catalog_scorers):
    """Workflow 11 on the tiny Kolors: a DiffSynth run's checkpoints/ folder (three epochs, written as DiffSynth's
    trainer leaves them) judged with the recipe's test prompt and negative list, the base model first; the best
    epoch's file is named, applied, generated again and saved with its score."""
    from devkit.kolors_models import RECIPE_PROMPT, kolors_epoch_loras

    graph = for_test_models(api_workflow("11-pick-the-best-epoch"), "", tiny_predictor, kolors=tiny_kolors_folder)
    sweep_id, valid_id = one(graph, "AestheteLoraSweep"), one(graph, "AestheteValidationSettings")
    sweep, valid = graph[sweep_id]["inputs"], graph[valid_id]["inputs"]
    assert (sweep["lora_set"], sweep["include_base"], sweep["alpha"]) == ("kolors_run/checkpoints", True, 4.0)
    assert valid["prompts"] == RECIPE_PROMPT
    judge = graph[valid["predictor"][0]]  # epochs judged by looks AND prompt alignment (no style collapse)
    assert judge["class_type"] == "AestheteJudge" and judge["inputs"]["scorer_1"][0] == one(
        graph, "AesthetePredictorLoader") and judge["inputs"]["scorer_2"][0] == one(graph, "AestheteScorerLoader")
    assert graph[one(graph, "KSampler")]["inputs"]["model"] == [sweep_id, 0]
    run = comfy_server.models_dir / "loras" / "kolors_run"
    kolors_epoch_loras(run / "comfy", run / "checkpoints")
    valid.update(width=64, height=64, steps=2, images_per_prompt=1)  # made cheap
    prefix = f"wf7-{uuid.uuid4().hex[:8]}/best_epoch"
    graph[one(graph, "AestheteSaveScored")]["inputs"]["filename_prefix"] = prefix

    result = run_everything(comfy, graph, timeout=400)

    rows = result.node_output(sweep_id)["sweep"]
    assert [r["epoch"] for r in rows] == [None, 0, 1, 2] and all(len(r["scores"]) == 1 for r in rows)
    assert all(len(r["columns"]) == 2 for r in rows)  # each scorer's column beside the combination
    best = max(rows, key=lambda r: r["scores"][0])
    assert ui_text(result, one(graph, "PreviewAny", "Best file")) == (best["file"] or "")
    assert "in epoch/step order" in ui_text(result, one(graph, "PreviewAny", "Ranking"))
    ARTIFACTS.mkdir(exist_ok=True)
    for title, picture in (("Every epoch, scored", "sweep-grid.png"), ("Score per epoch", "sweep-graph.png")):
        shown = result.node_output(one(graph, "PreviewImage", title))["images"]
        assert len(shown) == 1, title
        # for the README: what the node shows, on the tiny random test models
        (ARTIFACTS / picture).write_bytes(comfy.fetch_file(shown[0]["filename"], shown[0]["subfolder"],
                                                           shown[0]["type"]))
    from aesthete.scoring.annotate import read_score

    scores = summary_scores(ui_text(result, one(graph, "AestheteScore")))
    saved = sorted((comfy_server.output_dir / prefix).parent.glob("best_epoch_*.png"))
    assert len(saved) == 2 and [read_score(p) for p in saved] == pytest.approx(scores, abs=1e-3)


# --- the Kolors add-on workflows (7-10) on the tiny Kolors models ---------------------------------------------------

@pytest.fixture(scope="module")
def addon_picture(comfy_server) -> str:
    """A 64x64 picture whose right half is transparent (Load Image's mask: 1 there)."""
    yy, xx = np.mgrid[0:64, 0:64] / 64
    rgba = np.dstack([np.stack([xx, yy, 1 - xx * yy], axis=-1) * 255, np.where(xx < 0.5, 255, 0)])
    name = "aesthete-kolors-addon.png"
    Image.fromarray(rgba.round().astype(np.uint8), "RGBA").save(comfy_server.input_dir / name)
    return name


def run_addon(comfy, name: str, kolors: str, picture: str, **files) -> np.ndarray:
    """Workflow ``name`` on the tiny Kolors, the test picture and ``files`` (input name -> model file), every node run;
    returns the first saved image (for_test_models makes a batch of 1 into 2)."""
    graph = for_test_models(api_workflow(name), "", "", kolors=kolors)
    for node in graph.values():
        for key, value in files.items():
            if key in node["inputs"]:
                node["inputs"][key] = value
        if node["class_type"] == "LoadImage":
            node["inputs"]["image"] = picture
    save = one(graph, "SaveImage")
    graph[save]["inputs"]["filename_prefix"] = f"{name}-{uuid.uuid4().hex[:8]}"
    result = run_everything(comfy, graph, timeout=300)
    images = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB"), dtype=np.float32)
              for b in comfy.output_images(result, save)]
    assert images and all(im.shape == (64, 64, 3) and np.isfinite(im).all() for im in images)
    return images[0]


def test_kolors_img2img_runs(comfy, tiny_kolors_folder, addon_picture):
    graph = api_workflow("7-kolors-img2img")
    assert graph[one(graph, "KSampler")]["inputs"]["latent_image"][0] == one(graph, "VAEEncode")
    assert graph[one(graph, "KSampler")]["inputs"]["denoise"] < 1
    run_addon(comfy, "7-kolors-img2img", tiny_kolors_folder, addon_picture)


def test_kolors_inpainting_runs(comfy, comfy_server, tiny_kolors_folder, addon_picture):
    from devkit.kolors_models import tiny_kolors_inpainting

    unet = comfy_server.link_model("unet", tiny_kolors_inpainting() / "unet", "aesthete-tiny-kolors-inpainting")
    graph = api_workflow("8-kolors-inpainting")
    assert graph[one(graph, "KSampler")]["inputs"]["model"][0] == one(graph, "AestheteKolorsUNetLoader")
    run_addon(comfy, "8-kolors-inpainting", tiny_kolors_folder, addon_picture,
              unet_name=f"{unet}/diffusion_pytorch_model.safetensors")


def test_kolors_controlnet_canny_runs(comfy, comfy_server, tiny_kolors_folder, addon_picture):
    from devkit.kolors_models import tiny_kolors_controlnet

    folder = comfy_server.link_model("controlnet", tiny_kolors_controlnet(), "aesthete-tiny-kolors-controlnet")
    graph = api_workflow("9-kolors-controlnet-canny")
    assert graph[one(graph, "ControlNetApplyAdvanced")]["inputs"]["image"][0] == one(graph, "Canny")
    run_addon(comfy, "9-kolors-controlnet-canny", tiny_kolors_folder, addon_picture,
              control_net_name=f"{folder}/diffusion_pytorch_model.safetensors")


def test_kolors_ip_adapter_runs(comfy, comfy_server, tiny_kolors_folder, addon_picture):
    from devkit.kolors_models import tiny_kolors_ip_adapter

    folder = tiny_kolors_ip_adapter()
    adapter = comfy_server.link_model("ipadapter", folder / "ip_adapter_plus_general.bin", "aesthete-tiny-ip.bin")
    encoder = comfy_server.link_model("clip_vision", folder / "image_encoder" / "model.safetensors",
                                      "aesthete-kolors-image-encoder.safetensors")
    graph = api_workflow("10-kolors-ip-adapter")
    assert graph[one(graph, "KSampler")]["inputs"]["model"][0] == one(graph, "AestheteKolorsIPAdapter")
    run_addon(comfy, "10-kolors-ip-adapter", tiny_kolors_folder, addon_picture, ipadapter_name=adapter,
              clip_name=encoder)

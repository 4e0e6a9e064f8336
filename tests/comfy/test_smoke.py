"""The pack loads in a real ComfyUI, its nodes are listed, and a graph with an Aesthete node runs."""

from __future__ import annotations

EXPECTED_NODES = {
    "AesthetePromptComposer", "AestheteNegativePrompt", "AesthetePromptPresetSave", "AesthetePromptPresetLoad",
    "AesthetePredictorLoader", "AestheteScore", "AestheteRank", "AestheteScoreFolder", "AestheteSaveScored",
    "AestheteLoraLoader", "AestheteLoraDataset", "AestheteValidationSettings", "AestheteTrainLora", "AestheteLossGraph",
    "AestheteSaveLora",
}


def test_nodes_listed_under_aesthete(comfy):
    info = comfy.object_info()
    ours = {k: v for k, v in info.items() if k.startswith("Aesthete")}
    assert EXPECTED_NODES <= set(ours), f"missing: {EXPECTED_NODES - set(ours)}"
    for node_id, node in ours.items():
        assert node["category"].startswith("Aesthete/"), node_id
        assert node["description"], f"{node_id} has no description"
        for section in ("required", "optional"):
            for name, spec in node["input"].get(section, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{node_id} input {name} has no tooltip"
        assert all(node["output_tooltips"]), f"{node_id} has an output without tooltip"
        # an output without display_name is shown by its type ("STRING"), which tells the user nothing
        for name, kind in zip(node["output_name"], node["output"]):
            assert name != kind or name.lower() in ("model", "clip", "vae", "image", "latent", "control_net"), \
                f"{node_id}: output {name!r} has no display_name"


def test_pack_imported_without_errors(comfy_server):
    log = comfy_server.log_text()
    assert "comfyui-aesthete" in log  # ComfyUI lists the pack's import time
    ours = [line for line in log.splitlines() if "comfyui-aesthete" in line]
    assert not [line for line in ours if "IMPORT FAILED" in line or "Cannot import" in line], ours
    assert "Error while calling comfy_entrypoint" not in log

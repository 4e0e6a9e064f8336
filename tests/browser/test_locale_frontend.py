"""web/aesthete_locale.js: with the frontend in Chinese our nodes show locales/zh titles and labels; in English, English.

Frontend 1.32.9 drops custom-node translations for the user's locale (setLocaleMessage after mergeLocaleMessage);
the extension fills them in from /i18n. Widget names and node types must never change: workflows refer to them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from devkit.browser import Frontend
from harness.servers import running_test_server

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(__file__).resolve().parents[1] / ".artifacts"
NODES = ("AesthetePromptComposer", "AestheteNegativePrompt")


# creates our nodes as a click in the node library would, and reports what the canvas shows for them
PLACE_NODES_JS = """(types) => {
    const shown = (node) => ({
        type: node.type, title: node.title,
        widgets: (node.widgets || []).map(w => ({name: w.name, label: w.label})),
        inputs: (node.inputs || []).map(s => ({name: s.name, shown: s.label || s.localized_name || s.name})),
        outputs: (node.outputs || []).map(s => ({name: s.name, shown: s.label || s.localized_name || s.name})),
    });
    window.app.graph.clear();
    window.app.canvas.ds.scale = 0.75;
    window.app.canvas.ds.offset = [330, 160];
    let x = 0;
    const nodes = types.map(t => {
        const node = window.LiteGraph.createNode(t);
        node.pos = [x, 0];
        x += node.size[0] + 60;
        window.app.graph.add(node);
        return node;
    });
    window.app.canvas.setDirty(true, true);
    return nodes.map(shown);
}"""


def _locale(lang: str) -> dict:
    return json.loads((REPO / "locales" / lang / "nodeDefs.json").read_text(encoding="utf-8"))


def _check_names_unchanged(shown: dict, object_info: dict) -> None:
    """Node type, widget and slot names are the schema's ids, whatever the labels say."""
    info = object_info[shown["type"]]
    ids = {*info["input"].get("required", {}), *info["input"].get("optional", {})}
    assert shown["type"] in NODES
    assert {w["name"] for w in shown["widgets"]} <= ids
    assert {s["name"] for s in shown["inputs"]} <= ids
    assert [s["name"] for s in shown["outputs"]] == list(info["output_name"])


@pytest.fixture(scope="module")
def zh_server():
    """A ComfyUI of its own whose user has chosen Chinese (the session server's user has English)."""
    with running_test_server("aesthete-comfy-zh-", ARTIFACTS / "comfyui-zh.log",
                             settings={"Comfy.TutorialCompleted": True, "Comfy.Locale": "zh"},
                             on_start_error=lambda message: pytest.fail(message, pytrace=False)) as server:
        yield server


def _open(chromium, url: str) -> Frontend:
    page = chromium.new_page(viewport={"width": 1600, "height": 1000}, locale="en-US")
    fe = Frontend(page, url)
    fe.open()
    return fe


def test_zh_user_sees_chinese_titles_and_labels(chromium, zh_server):
    zh = _locale("zh")
    served = requests.get(zh_server.url + "/i18n", timeout=10).json()
    assert served["zh"]["nodeDefs"]["AesthetePromptComposer"] == zh["AesthetePromptComposer"]
    object_info = requests.get(zh_server.url + "/object_info", timeout=30).json()

    fe = _open(chromium, zh_server.url)
    try:
        assert fe.page.evaluate("() => window.app.extensionManager.setting.get('Comfy.Locale')") == "zh"
        shown = fe.page.evaluate(PLACE_NODES_JS, list(NODES))
        for node in shown:
            strings = zh[node["type"]]
            _check_names_unchanged(node, object_info)
            assert node["title"] == strings["display_name"]
            assert node["widgets"], f"{node['type']} shows no widgets"
            for w in node["widgets"]:
                assert w["label"] == strings["inputs"][w["name"]]["name"], w
            for s in node["inputs"]:  # sockets without a widget (preset, clip) and the widgets' sockets
                assert s["shown"] == strings["inputs"][s["name"]]["name"], s
            assert [s["shown"] for s in node["outputs"]] == [
                strings["outputs"][str(i)]["name"] for i in range(len(node["outputs"]))]

        # running the extension again (as if the frontend had translated first) changes nothing, and a slot
        # the user renamed keeps the user's name
        again = fe.page.evaluate("""() => {
            const ext = window.app.extensions.find(e => e.name === 'aesthete.locale');
            const node = window.app.graph._nodes.find(n => n.type === 'AestheteNegativePrompt');
            const labels = () => JSON.stringify([node.title, node.widgets.map(w => w.label),
                node.inputs.map(s => s.label || s.localized_name), node.outputs.map(s => s.localized_name)]);
            const before = labels();
            node.inputs[0].label = 'my preset';
            ext.nodeCreated(node, window.app);
            ext.nodeCreated(node, window.app);
            const kept = node.inputs[0].label;
            node.inputs[0].label = undefined;
            return {same: labels() === before, kept};
        }""")
        assert again == {"same": True, "kept": "my preset"}

        # the node library and tooltips read the registered definition
        described = fe.page.evaluate("""(types) => types.map(t => {
            const def = window.LiteGraph.registered_node_types[t].nodeData;
            return [def.display_name, def.description];
        })""", list(NODES))
        assert described == [[zh[t]["display_name"], zh[t]["description"]] for t in NODES]

        # what a saved workflow and the queued prompt hold: the English ids, never the labels
        saved = fe.page.evaluate("() => window.app.graph.serialize()")
        assert sorted(n["type"] for n in saved["nodes"]) == sorted(NODES)
        prompt = fe.graph_to_prompt()
        for entry in prompt.values():
            info = object_info[entry["class_type"]]["input"]
            assert set(entry["inputs"]) <= {*info.get("required", {}), *info.get("optional", {})}

        fe.page.wait_for_timeout(300)  # one frame drawn with the new labels
        fe.screenshot(ARTIFACTS / "zh-labels.png")

        # the saved workflow loaded again (configure runs after the constructor) keeps the labels
        labels = fe.page.evaluate("""async () => {
            await window.app.loadGraphData(window.app.graph.serialize(), true, true, null);
            return window.app.graph._nodes.map(n => [n.type, n.title, (n.widgets || []).map(w => [w.name, w.label])]);
        }""")
        assert sorted(node_id for node_id, _, _ in labels) == sorted(NODES)
        for node_id, title, widgets in labels:
            assert title == zh[node_id]["display_name"]
            assert widgets and all(label == zh[node_id]["inputs"][name]["name"] for name, label in widgets), widgets
        assert [e for e in fe.errors if "aesthete" in e.lower()] == []
    finally:
        fe.page.close()


def test_en_user_sees_english_titles_and_labels(chromium, comfy_server, comfy):
    en = _locale("en")
    fe = _open(chromium, comfy_server.url)
    try:
        assert fe.page.evaluate("() => window.app.extensionManager.setting.get('Comfy.Locale')") == "en"
        shown = fe.page.evaluate(PLACE_NODES_JS, list(NODES))
        for node in shown:
            strings = en[node["type"]]
            _check_names_unchanged(node, comfy.object_info())
            assert node["title"] == strings["display_name"]
            for w in node["widgets"]:
                assert w["label"] in (strings["inputs"][w["name"]]["name"], w["name"]), w
        assert [e for e in fe.errors if "aesthete" in e.lower()] == []
    finally:
        fe.page.close()

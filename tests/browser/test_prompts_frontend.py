"""The composer in the real frontend: its widgets, set as a user would, become a graph ComfyUI runs."""

from __future__ import annotations

from pathlib import Path


ARTIFACTS = Path(__file__).resolve().parents[1] / ".artifacts"


def test_composer_widgets_from_the_frontend_run_in_comfyui(frontend, comfy):
    frontend.page.evaluate("""() => {
        window.app.graph.clear();
        const composer = window.LiteGraph.createNode('AesthetePromptComposer');
        const negative = window.LiteGraph.createNode('AestheteNegativePrompt');
        const shows = [0, 1].map(() => window.LiteGraph.createNode('PreviewAny'));
        for (const n of [composer, negative, ...shows]) window.app.graph.add(n);
        const set = (node, name, value) => { node.widgets.find(w => w.name === name).value = value; };
        set(composer, 'character', 'ganyu');
        set(composer, 'hair', '蓝发少女');
        set(composer, 'hair_weight', 1.2);
        set(composer, 'scene', '白色背景');
        set(composer, 'scene_on', false);
        set(negative, 'preset', 'recipe-en');
        composer.connect(0, shows[0], 0);
        negative.connect(0, shows[1], 0);
    }""")
    graph = frontend.graph_to_prompt()
    [composer_id] = [k for k, v in graph.items() if v["class_type"] == "AesthetePromptComposer"]
    inputs = graph[composer_id]["inputs"]
    assert {f"{f}_weight" for f in ("style", "character", "extra")} <= set(inputs) and inputs["scene_on"] is False
    result = comfy.run(graph)
    texts = {result.node_output(k)["text"][0] for k, v in graph.items() if v["class_type"] == "PreviewAny"}
    assert "ganyu，(蓝发少女:1.2)" in texts
    assert any(t.startswith("blurry, low resolution, deformed") for t in texts)
    assert not [e for e in frontend.errors if "aesthete" in e.lower()]
    frontend.screenshot(ARTIFACTS / "prompt-composer.png")

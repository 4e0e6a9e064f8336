"""The real ComfyUI frontend loads with the pack: its nodes are registered and nothing of ours logs an error."""

from __future__ import annotations

from pathlib import Path

ARTIFACTS = Path(__file__).resolve().parents[1] / ".artifacts"


def test_frontend_registers_aesthete_nodes(frontend, comfy):
    ours = {k for k in comfy.object_info() if k.startswith("Aesthete")}
    registered = set(frontend.registered_node_types())
    assert ours and ours <= registered, f"not in the frontend: {ours - registered}"
    pack_errors = [e for e in frontend.errors if "aesthete" in e.lower()]
    assert pack_errors == []
    frontend.screenshot(ARTIFACTS / "frontend-smoke.png")


def test_frontend_places_an_aesthete_node(frontend):
    """A node of ours can be added to the canvas by id, with its widgets, as a user's click would."""
    info = frontend.page.evaluate("""() => {
        const node = window.LiteGraph.createNode('AesthetePromptComposer');
        window.app.graph.add(node);
        return {type: node.type, widgets: (node.widgets || []).map(w => w.name), title: node.title};
    }""")
    assert info["type"] == "AesthetePromptComposer"
    assert info["widgets"], "the composer shows no widgets"

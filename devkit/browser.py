"""Drive the real ComfyUI frontend in headless Chromium: load workflows, find missing nodes, take screenshots."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Frontend:
    page: object
    url: str
    errors: list[str] = field(default_factory=list)

    def open(self, timeout_ms: int = 120_000) -> None:
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.page.goto(self.url + "/", wait_until="domcontentloaded", timeout=timeout_ms)
        # the app object exists once the graph canvas is set up and node definitions are registered
        self.page.wait_for_function("() => window.app && window.app.graph && window.app.canvas",
                                    timeout=timeout_ms)
        self.page.wait_for_function(
            "() => window.LiteGraph && Object.keys(window.LiteGraph.registered_node_types).length > 100",
            timeout=timeout_ms)

    def registered_node_types(self) -> list[str]:
        return self.page.evaluate("() => Object.keys(window.LiteGraph.registered_node_types)")

    def load_workflow(self, workflow: dict) -> dict:
        """Load a UI-format workflow with app.loadGraphData; returns missing node types and the node count."""
        return self.page.evaluate(
            """async (wf) => {
                const known = window.LiteGraph.registered_node_types;
                const missing = [...new Set((wf.nodes || []).map(n => n.type).filter(t => !(t in known)))];
                await window.app.loadGraphData(wf, true, true, null);
                return {missing, count: window.app.graph._nodes.length};
            }""", workflow)

    def graph_to_prompt(self) -> dict:
        """The frontend's own API-format conversion of the loaded graph."""
        return self.page.evaluate("async () => (await window.app.graphToPrompt()).output")

    def screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(path))
        return path

    def dump(self, obj) -> str:
        return json.dumps(obj, ensure_ascii=False, indent=1)

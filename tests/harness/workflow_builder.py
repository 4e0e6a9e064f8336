"""Build UI-format ComfyUI workflows in the real frontend from a compact spec, so widget order, link ids and
slot types are exactly what the frontend itself writes. Used by scripts/build_workflows.py."""

from __future__ import annotations

from dataclasses import dataclass, field

BUILD_JS = """
async (spec) => {
  await window.app.loadGraphData({nodes: [], links: [], groups: [], version: 0.4}, true, true, null);
  const graph = window.app.graph;
  const byKey = {};
  for (const n of spec.nodes) {
    const node = window.LiteGraph.createNode(n.type);
    if (!node) throw new Error('unknown node type ' + n.type);
    node.pos = n.pos;
    graph.add(node);
    if (n.title) node.title = n.title;
    if (n.color) { node.color = n.color[0]; node.bgcolor = n.color[1]; }
    for (const [name, value] of Object.entries(n.widgets || {})) {
      const w = (node.widgets || []).find(w => w.name === name);
      if (!w) throw new Error(n.type + ' has no widget ' + name + '; has ' + (node.widgets || []).map(w => w.name));
      w.value = value;
      if (w.callback) { try { w.callback(value, window.app.canvas, node); } catch (e) {} }
    }
    if (n.size) node.size = n.size; else node.setSize(node.computeSize());
    byKey[n.key] = node;
  }
  for (const [src, srcSlot, dst, dstName] of spec.links) {
    const a = byKey[src], b = byKey[dst];
    const out = typeof srcSlot === 'number' ? srcSlot : a.findOutputSlot(srcSlot);
    const inp = b.findInputSlot(dstName);
    if (out < 0 || inp < 0) throw new Error(`bad link ${src}.${srcSlot} -> ${dst}.${dstName}`);
    if (!a.connect(out, b, inp)) throw new Error(`link refused ${src}.${srcSlot} -> ${dst}.${dstName}`);
  }
  for (const g of spec.groups) {
    const members = g.nodes.map(k => byKey[k]);
    const x0 = Math.min(...members.map(n => n.pos[0])) - 20;
    const y0 = Math.min(...members.map(n => n.pos[1])) - 60;
    const x1 = Math.max(...members.map(n => n.pos[0] + n.size[0])) + 20;
    const y1 = Math.max(...members.map(n => n.pos[1] + n.size[1])) + 20;
    const group = new window.LiteGraph.LGraphGroup(g.title);
    group.pos = [x0, y0]; group.size = [x1 - x0, y1 - y0];
    if (g.color) group.color = g.color;
    graph.add(group);
  }
  graph.setDirtyCanvas(true, true);
  return graph.serialize();
}
"""

FIT_JS = """
() => {
  const nodes = window.app.graph._nodes;
  const groups = window.app.graph._groups || window.app.graph.groups || [];
  const boxes = nodes.map(n => [n.pos[0], n.pos[1] - 40, n.pos[0] + n.size[0], n.pos[1] + n.size[1]])
    .concat(groups.map(g => [g.pos[0], g.pos[1], g.pos[0] + g.size[0], g.pos[1] + g.size[1]]));
  const x0 = Math.min(...boxes.map(b => b[0])), y0 = Math.min(...boxes.map(b => b[1]));
  const x1 = Math.max(...boxes.map(b => b[2])), y1 = Math.max(...boxes.map(b => b[3]));
  const canvas = window.app.canvas, el = canvas.canvas;
  const scale = Math.min((el.width / devicePixelRatio) / (x1 - x0 + 80), (el.height / devicePixelRatio) / (y1 - y0 + 80), 1);
  canvas.ds.scale = scale;
  canvas.ds.offset = [-x0 + 40 / scale, -y0 + 40 / scale];
  canvas.setDirty(true, true);
}
"""


@dataclass
class Node:
    key: str
    type: str
    pos: tuple[int, int]
    widgets: dict = field(default_factory=dict)
    title: str | None = None
    size: tuple[int, int] | None = None
    color: tuple[str, str] | None = None

    def as_dict(self) -> dict:
        d = {"key": self.key, "type": self.type, "pos": list(self.pos), "widgets": self.widgets}
        if self.title:
            d["title"] = self.title
        if self.size:
            d["size"] = list(self.size)
        if self.color:
            d["color"] = list(self.color)
        return d


@dataclass
class Group:
    title: str
    nodes: list[str]
    color: str | None = None


@dataclass
class WorkflowSpec:
    name: str
    nodes: list[Node]
    links: list[tuple]
    groups: list[Group]

    def as_dict(self) -> dict:
        return {"nodes": [n.as_dict() for n in self.nodes], "links": [list(link) for link in self.links],
                "groups": [{"title": g.title, "nodes": g.nodes, "color": g.color} for g in self.groups]}


def build_in_frontend(page, spec: WorkflowSpec) -> dict:
    return page.evaluate(BUILD_JS, spec.as_dict())


def fit_view(page) -> None:
    page.evaluate(FIT_JS)
    page.wait_for_timeout(300)

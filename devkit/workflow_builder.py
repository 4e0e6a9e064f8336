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
    node.pos = n.pos || [0, 0];
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
  // columns read left to right: each a list of node keys (stacked top-down) and numbers (extra vertical space)
  const ctx = document.createElement('canvas').getContext('2d');
  ctx.font = '24px Arial';  // LiteGraph's group title font
  let x = 0;
  for (const column of spec.columns || []) {
    let y = 0, width = 0;
    for (const g of spec.groups) {  // a group held by this column alone must be wide enough for its title
      if (g.nodes.every(k => column.includes(k))) width = Math.max(width, ctx.measureText(g.title).width * 1.15);
    }
    for (const entry of column) {
      if (typeof entry === 'number') { y += entry; continue; }
      const node = byKey[entry];
      if (!node) throw new Error('column names an unknown node ' + entry);
      node.pos = [x, y];
      y += node.size[1] + 50;  // 30 for the next node's title bar
      width = Math.max(width, node.size[0]);
    }
    x += width + 110;  // room for two group borders
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
    const y1 = Math.max(...members.map(n => n.pos[1] + n.size[1])) + 20;
    const x1 = Math.max(Math.max(...members.map(n => n.pos[0] + n.size[0])) + 20,
                        x0 + ctx.measureText(g.title).width * 1.15 + 20);  // the title fits inside
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
  const graph = window.app.graph;
  const groups = graph._groups || graph.groups || [];
  const boxes = graph._nodes.map(n => [n.pos[0], n.pos[1] - 30, n.pos[0] + n.size[0], n.pos[1] + n.size[1]])
    .concat(groups.map(g => [g.pos[0], g.pos[1], g.pos[0] + g.size[0], g.pos[1] + g.size[1]]));
  const x0 = Math.min(...boxes.map(b => b[0])), y0 = Math.min(...boxes.map(b => b[1]));
  const x1 = Math.max(...boxes.map(b => b[2])), y1 = Math.max(...boxes.map(b => b[3]));
  window.app.canvas.ds.fitToBounds([x0, y0, x1 - x0, y1 - y0], {zoom: 0.96});
  window.app.canvas.setDirty(true, true);
}
"""

# full-quality drawing at any zoom, no minimap or overlays: the picture shows only the graph
CLEAN_VIEW_JS = """
async () => {
  const settings = window.app.extensionManager.setting;
  for (const [id, value] of [['Comfy.Minimap.Visible', false], ['Comfy.Graph.CanvasInfo', false],
                             ['LiteGraph.Canvas.LowQualityRenderingZoomThreshold', 0.1],
                             ['LiteGraph.Canvas.MinFontSizeForLOD', 1],
                             ['Comfy.NodeBadge.NodeSourceBadgeMode', 'None']]) {
    try { await settings.set(id, value); } catch (e) { /* a setting this frontend lacks */ }
  }
}
"""
# everything but the canvas and the widgets drawn over it (text boxes) is hidden
CANVAS_ONLY_CSS = ("body * {visibility: hidden !important} "
                   "canvas#graph-canvas, .dom-widget, .dom-widget * {visibility: visible !important}")


@dataclass
class Node:
    key: str
    type: str
    pos: tuple[int, int] | None = None  # None: placed by WorkflowSpec.columns
    widgets: dict = field(default_factory=dict)
    title: str | None = None
    size: tuple[int, int] | None = None
    color: tuple[str, str] | None = None

    def as_dict(self) -> dict:
        d = {"key": self.key, "type": self.type, "pos": list(self.pos) if self.pos else None, "widgets": self.widgets}
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
    # left to right, each a list of node keys stacked top-down (an int adds that much vertical space)
    columns: list[list] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"nodes": [n.as_dict() for n in self.nodes], "links": [list(link) for link in self.links],
                "columns": self.columns,
                "groups": [{"title": g.title, "nodes": g.nodes, "color": g.color} for g in self.groups]}


def build_in_frontend(page, spec: WorkflowSpec) -> dict:
    return page.evaluate(BUILD_JS, spec.as_dict())


def fit_view(page) -> None:
    page.evaluate(FIT_JS)
    page.wait_for_timeout(300)


def screenshot_graph(page, path, jpeg_quality: int | None = None) -> None:
    """A picture of the whole loaded graph (fitted, full quality, no menus): PNG, or JPEG with ``jpeg_quality``."""
    page.evaluate(CLEAN_VIEW_JS)
    page.add_style_tag(content=CANVAS_ONLY_CSS)
    fit_view(page)
    page.wait_for_timeout(200)
    if jpeg_quality:
        page.screenshot(path=str(path), type="jpeg", quality=jpeg_quality)
    else:
        page.screenshot(path=str(path))

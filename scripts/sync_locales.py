"""Regenerate locales/en/nodeDefs.json from the node schemas and list what locales/zh/nodeDefs.json lacks.

  .venv/bin/python scripts/sync_locales.py          # rewrite the English file, report missing Chinese
  .venv/bin/python scripts/sync_locales.py --check  # exit 1 when either file is out of date
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMFY_DIR = ROOT / ".comfyui" / "ComfyUI"


def english_defs() -> dict:
    sys.path.insert(0, str(COMFY_DIR))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # before model_management is imported: no GPU needed
    import aesthete

    ext = asyncio.run(aesthete.comfy_entrypoint())
    classes = asyncio.run(ext.get_node_list())
    defs = {}
    for cls in classes:
        schema = cls.define_schema()
        entry = {"display_name": schema.display_name, "description": schema.description}
        inputs = {i.id: {"name": i.display_name or i.id, "tooltip": i.tooltip} for i in schema.inputs or []}
        outputs = {str(n): {"name": o.display_name or o.id, "tooltip": o.tooltip}
                   for n, o in enumerate(schema.outputs or [])}
        if inputs:
            entry["inputs"] = inputs
        if outputs:
            entry["outputs"] = outputs
        defs[schema.node_id] = entry
    return defs


def missing_translations(en: dict, zh: dict, prefix: str = "") -> list[str]:
    missing = []
    for key, value in en.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            missing += missing_translations(value, zh.get(key, {}) if isinstance(zh, dict) else {}, path + ".")
        elif value and not (isinstance(zh, dict) and zh.get(key)):
            missing.append(path)
    return missing


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    en = english_defs()
    en_path = ROOT / "locales" / "en" / "nodeDefs.json"
    zh_path = ROOT / "locales" / "zh" / "nodeDefs.json"
    zh = json.loads(zh_path.read_text(encoding="utf-8")) if zh_path.exists() else {}
    missing = missing_translations(en, zh)
    current = json.loads(en_path.read_text(encoding="utf-8")) if en_path.exists() else None
    for m in missing:
        sys.stderr.write(f"zh missing: {m}\n")
    if args.check:
        return 1 if (current != en or missing) else 0
    write_json(en_path, en)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The development kit: what the tests, the benchmarks and the scripts share, written once.

The model and data factories (random-weight models in the real file layouts, cached in ``tests/.models``; training
folders; image files), the embedded ComfyUI server starter and its client, the graph builders (``graph.new_graph``,
the Train LoRA part), the workflow builder and the headless frontend, the references that need other package
versions, and the benchmarks' child-process runner (``child``). What only the tests use (their fixtures,
``run_in_comfy``, comfy-cli, the test-only nodes) stays in ``tests/harness``.

A package of its own, not ``tests.harness``: a benchmark or the workflow builder is not a test, and ComfyUI has a
top-level ``tests`` package of its own that ``tests.harness`` had to be imported before. Development only: the
published archive leaves it out (``.comfyignore``), and the pack's own packages never import it (ruff's banned-api
rule in pyproject.toml). Import it from the repository root (``from devkit.factories import ...``; pytest puts the
root on the path), and run tools as modules from there: ``.venv/bin/python -m benchmarks.bench_scoring``.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

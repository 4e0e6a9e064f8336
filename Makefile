# Aesthete: `make run` starts a real ComfyUI with the pack; `make test` runs the whole test suite.
HOST ?= 127.0.0.1
PORT ?= 8188
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: run test setup setup-test lint bench clean

setup:
	@bash scripts/setup.sh

setup-test:
	@bash scripts/setup.sh --test

run: setup
	@$(PY) scripts/run_comfyui.py --host $(HOST) --port $(PORT)

test: setup-test
	@$(PY) -m ruff check .
	@$(PY) -m pytest $(PYTEST_ARGS)

lint: setup-test
	@$(PY) -m ruff check .

# speed and memory, each against a baseline measured in the same run (prints ratios)
bench: setup-test
	@$(PY) -m benchmarks.bench_scoring
	@$(PY) -m benchmarks.bench_judge
	@$(PY) -m benchmarks.bench_filter
	@$(PY) -m benchmarks.bench_lora
	@$(PY) -m benchmarks.bench_training
	@$(PY) -m benchmarks.bench_training_kolors
	@$(PY) -m benchmarks.bench_kolors_text
	@$(PY) -m benchmarks.bench_kolors
	@$(PY) -m benchmarks.bench_kolors_quantized
	@$(PY) -m benchmarks.bench_kolors_addons

clean:
	rm -rf .venv .comfyui .cache tests/.models tests/.artifacts

"""Prompt-order assembly (issue 4): the recipe's field order, weights, escaping, language-aware joining,
negative presets and named composer presets. Runs without ComfyUI."""

"""Prompt-order assembly: the recipe's field order, weights, escaping, language-aware joining,
negative presets and named composer presets. Runs without ComfyUI."""

"""Kolors domain code (no ComfyUI import): ChatGLM3, its tokenizer."""

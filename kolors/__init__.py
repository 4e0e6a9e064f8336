"""Kolors on disk and its ChatGLM3 text encoder, without ComfyUI (nodes/kolors_model.py adapts them)."""

"""LoRA files of every common format: read safely, recognise, place on SD1.5/SDXL/Kolors UNet modules and convert
between ComfyUI's and DiffSynth-Studio's layouts. No ComfyUI imports (nodes/lora_nodes.py adapts this)."""

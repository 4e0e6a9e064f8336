"""LoRA files of every common format: read safely, recognise each layer's kind (LoRA, LoCon, LoHa, LoKr, DoRA, full
differences), name it for ComfyUI's loader through a key map (the loaded model's, passed in by nodes/lora_nodes.py,
or the standard SD1.5/SDXL one), report, and convert between ComfyUI's and DiffSynth-Studio's layouts. No ComfyUI
imports."""

"""LoRA training without ComfyUI: captioned dataset folders (``dataset``, ``captions``), LoRA layers in ComfyUI's
key format (``lora_network``), the denoising loss (``objective``), the loop (``loop``), one run with its encoding
cache (``trainer``), the loss graph (``loss_graph``) and atomic saving (``save``). ``nodes/training_nodes.py``
adapts it to ComfyUI."""

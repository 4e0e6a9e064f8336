"""Load a LoRA file with DiffSynth-Studio 1.1.9's own LoRA loading into its Kolors UNet and print what it did (JSON).

Runs with DiffSynth 1.1.9 and its transformers<5 first on the path (`make setup-test` builds that folder from
tests/reference/diffsynth.txt; devkit/reference.py runs it):

    PYTHONPATH=.cache/reference/diffsynth .venv/bin/python scripts/check_diffsynth_lora.py FILE.safetensors LORA_ALPHA

DiffSynth's ``SDXLUNet(is_kolors=True)`` is built on the meta device (no memory); only the Linear layers the file
names (and the first layer, whose device DiffSynth computes on) are given real weights, all zeros, so after ``ModelManager.load_lora`` each of them holds exactly the update
DiffSynth computed. Prints {"loaded_by": the loader class that matched, "updated": {parameter: [shape]},
"sums": {parameter: [sum, sum of squares]}} and writes the updated weights to FILE + ".diffsynth-result" (safetensors)
for the caller to compare with its own.
"""

from __future__ import annotations

import json
import sys

import torch


def main(path: str, lora_alpha: float) -> int:
    from diffsynth.models.lora import get_lora_loaders
    from diffsynth.models.model_manager import ModelManager
    from diffsynth.models.sdxl_unet import SDXLUNet
    from diffsynth.models.utils import load_state_dict
    from safetensors.torch import save_file

    with torch.device("meta"):
        unet = SDXLUNet(is_kolors=True)
    lora = load_state_dict(path)
    targets = sorted({k.split(".lora_B.")[0] for k in lora if ".lora_B." in k})
    modules = dict(unet.named_modules())
    first = next(iter(unet.state_dict())).rsplit(".", 1)[0]  # DiffSynth computes on the first parameter's device
    for name in targets + [first]:
        if name in modules:
            modules[name].to_empty(device="cpu")
            torch.nn.init.zeros_(modules[name].weight)
            if getattr(modules[name], "bias", None) is not None:
                torch.nn.init.zeros_(modules[name].bias)
    matched = next((type(loader).__name__ for loader in get_lora_loaders() if loader.match(unet, lora) is not None),
                   None)
    manager = ModelManager(torch_dtype=torch.float32, device="cpu")
    manager.model, manager.model_name, manager.model_path = [unet], ["sdxl_unet"], ["tiny"]
    manager.load_lora(path, lora_alpha=lora_alpha)
    updated = {f"{name}.weight": modules[name].weight.detach().clone() for name in targets if name in modules}
    save_file(updated, path + ".diffsynth-result")
    sys.stdout.write("@@RESULT@@" + json.dumps({
        "loaded_by": matched, "lora_tensors": len(lora), "missing_modules": [n for n in targets if n not in modules],
        "updated": {k: list(v.shape) for k, v in updated.items()},
        "nonzero": sum(int(v.abs().sum() > 0) for v in updated.values())}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], float(sys.argv[2])))

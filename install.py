"""Run by ComfyUI-Manager after `pip install -r requirements.txt` (and safe to run by hand).

simple-aesthetics-predictor's metadata pins transformers<5 although its code works on transformers 5.x, so it is
installed without its declared requirements: installing Aesthete never downgrades a user's transformers.
"""

import importlib.util
import subprocess
import sys

SAP_PIN = "simple-aesthetics-predictor==0.1.2"


def main() -> int:
    if importlib.util.find_spec("aesthetics_predictor") is not None:
        return 0
    return subprocess.call([sys.executable, "-m", "pip", "install", "--no-deps", SAP_PIN])


if __name__ == "__main__":
    sys.exit(main())

"""Run by ComfyUI-Manager after `pip install -r requirements.txt` (and safe to run by hand with ComfyUI's Python:
`python install.py`, on the Windows portable build `..\\..\\..\\python_embeded\\python.exe install.py`).

simple-aesthetics-predictor's metadata pins transformers<5 although its code works on transformers 5.x, so it is
installed without its declared requirements: installing Aesthete never downgrades a user's transformers. Afterwards
`pip check` names that pin; the README ("What `pip check` says afterwards") explains it and how to undo the install.
"""

import importlib.util
import logging
import subprocess
import sys

SAP_PIN = "simple-aesthetics-predictor==0.1.2"

log = logging.getLogger("aesthete.install")


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="aesthete install: %(message)s")
    if importlib.util.find_spec("aesthetics_predictor") is not None:
        log.info("simple-aesthetics-predictor is already installed for %s", sys.executable)
        return 0
    # sys.executable: the Python that runs this script, which must be ComfyUI's (ComfyUI-Manager runs it so)
    rc = subprocess.call([sys.executable, "-m", "pip", "install", "--no-deps", SAP_PIN])
    if rc == 0:
        log.info("installed %s for %s without its transformers<5 pin; `pip check` will name that pin, which is "
                 "expected (see the README)", SAP_PIN, sys.executable)
    else:
        log.error("`%s -m pip install --no-deps %s` failed (exit status %d); run it by hand with ComfyUI's Python",
                  sys.executable, SAP_PIN, rc)
    return rc


if __name__ == "__main__":
    sys.exit(main())

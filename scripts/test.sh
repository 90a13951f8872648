#!/usr/bin/env bash
# Set up a fresh machine (same install as the quickstart, plus the optional Detectron2 extra the detection
# tests need) and run the whole test suite on the CPU. Extra arguments go to pytest.
set -euo pipefail
# the tracker tests (tests/test_trackers.py) run Weights & Biases offline and MLflow's file store
SSL_REPRO_EXTRAS="dev,wandb,mlflow"
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
bash scripts/install_detectron2.sh "$VENV"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
"$VENV/bin/python" -m pytest tests "$@"

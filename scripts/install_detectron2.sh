#!/usr/bin/env bash
# Install Detectron2 as pure Python into a virtual environment (default: .venv), for the optional
# detection-transfer protocol (evaluation/detection/).
#
# Detectron2 is not on PyPI. With internet access the official route is
#     pip install 'git+https://github.com/facebookresearch/detectron2.git'
# which compiles its C++/CUDA ops. Where only PyPI is reachable, this script installs the wheel
# sal-detectron2==0.7.2 (upstream Detectron2 repackaged, built for CPython 3.10) into its own folder,
# drops its compiled extension (built for another Python) and its tools/ scripts, and puts the folder on the
# venv's path with a .pth file. Without the extension, ROIAlign and NMS come from torchvision (Detectron2's own
# fallback) and COCO evaluation must use pycocotools (COCOEvaluator(use_fast_impl=False)); our train entry
# point relies on both. Re-running is a no-op once everything imports.
set -euo pipefail

VENV="${1:-.venv}"
PY="$VENV/bin/python"
if [[ ! -x "$PY" ]]; then
    echo "install_detectron2.sh: no Python at $PY (pass the virtual environment's folder)" >&2
    exit 2
fi

# The pure-Python dependencies Detectron2 imports on the paths we use (yacs config, modeling, data, evaluation).
# hydra-core is left out on purpose: only LazyConfig overrides import it, and it would pin omegaconf<2.4.
# setuptools<81 still ships pkg_resources, which detectron2.model_zoo imports.
DEPS=(
    "fvcore>=0.1.5,<0.1.6"
    "iopath>=0.1.7,<0.1.10"
    "yacs>=0.1.8"
    "pycocotools>=2.0.2"
    "setuptools<81"
    "cloudpickle"
    "tabulate"
    "termcolor>=1.1"
    "portalocker"
    "omegaconf>=2.1,<2.4"
)

SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
TARGET="$(cd "$VENV" && pwd)/detectron2-pure"
PTH="$SITE/detectron2-pure.pth"

already_installed() {
    "$PY" - <<'PY' 2>/dev/null
import importlib.metadata as md
import detectron2, fvcore, iopath, pycocotools, yacs, pkg_resources  # noqa: F401
import detectron2.engine  # what the detection code imports: every dependency, omegaconf included
from packaging.version import Version
assert detectron2.__version__.startswith("0.")
assert Version(md.version("iopath")) < Version("0.1.10")
assert Version(md.version("setuptools")) < Version("81")
PY
}

if [[ -f "$PTH" ]] && already_installed; then
    echo "detectron2 already installed in $VENV ($TARGET)"
    exit 0
fi

rm -rf "$TARGET"
"$PY" -m pip install --quiet --no-deps --only-binary=:all: --python-version 3.10 \
    --target "$TARGET" "sal-detectron2==0.7.2"
# Keep only the importable package: without its dist-info, pip does not check the wheel's pins (numpy<2,
# omegaconf<2.4, hydra-core, black) against the rest of the venv on every later install.
rm -rf "$TARGET/tools" "$TARGET"/sal_detectron2-*.dist-info
find "$TARGET" -name '*.so' -delete
echo "$TARGET" > "$PTH"

"$PY" -m pip install --quiet "${DEPS[@]}"

if ! already_installed; then
    echo "install_detectron2.sh: detectron2 was installed into $TARGET but does not import with $PY" >&2
    exit 1
fi
echo "detectron2 installed in $VENV ($TARGET)"

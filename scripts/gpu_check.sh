#!/usr/bin/env bash
# GPU check, for one H100/H200-class GPU: under 8 minutes, so that it can be rerun once in a short GPU slot.
#
#   bash scripts/gpu_check.sh [--out DIR]     # on the GPU machine, from the repository root (default DIR:
#                                             # bench/results/gpu); PYTHON=... picks the interpreter
#   bash scripts/gpu_check.sh --quick         # the same code paths on the CPU, tiny sizes (tests/test_gpu_check.py)
#
# Part 1  bench/gpu_check.py: each paper's main config (StochCon, MSBReg, VCReg ImageNet ResNet-50) at 224 px on
#         synthetic ImageNet-shaped data (random uint8 images in GPU memory, views by the on-device augmentation),
#         bf16, the largest batch that fits (doubling from 64 until out of memory), 50 steps: images/s, peak
#         memory (torch.cuda.max_memory_allocated), finite losses; VCReg once more under fp16 (grad scaler).
# Part 2  bench/switches.py: bf16, channels_last, torch.compile and optimiser switches, ResNet-50, 224 px, batch 256.
# Part 3  bench/vcreg_overhead.py: VCReg layer cost (identity / naive / fast / BatchNorm) on ConvNeXt-T and ViT-B/32.
# Part 4  the input-pipeline benchmark (see the marked place below).
#
# Every part has a time limit (PART*_SECONDS; their sum is 7.75 minutes); a part that fails or runs out of time is
# reported and the next one still runs; the exit status is 1 if any part failed. JSON files go to DIR.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PYTHON="${PYTHON:-python}"
QUICK=0
OUT=bench/results/gpu
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --out) OUT="$2"; shift ;;
    *) echo "usage: $0 [--quick] [--out DIR]" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$OUT"

# --quick: generous limits (a test on a shared CPU must not fail because the machine is busy)
LIMIT_DEFAULT=$([ "$QUICK" = 1 ] && echo 900)
PART1_SECONDS="${PART1_SECONDS:-${LIMIT_DEFAULT:-190}}"
PART2_SECONDS="${PART2_SECONDS:-${LIMIT_DEFAULT:-105}}"
PART3_SECONDS="${PART3_SECONDS:-${LIMIT_DEFAULT:-50}}"
PART4_SECONDS="${PART4_SECONDS:-${LIMIT_DEFAULT:-125}}"  # the four parts: 470 s, under 8 minutes
FAILED=()

if [ "$QUICK" = 1 ]; then
  DEVICE_NAME="CPU (--quick)"
else
  if ! DEVICE_NAME="$("$PYTHON" -c 'import torch; print(torch.cuda.get_device_name(0))' 2>/dev/null)"; then
    echo "error: no CUDA device; use --quick for the CPU version" >&2
    exit 2
  fi
fi

# run_part NAME SECONDS COMMAND...: a header with the device, the command under a time limit, its status.
run_part() {
  local name="$1" seconds="$2"
  shift 2
  echo
  echo "== $name on $DEVICE_NAME (limit ${seconds} s) =="
  echo "\$ $*"
  local start=$SECONDS
  timeout --kill-after=10 "$seconds" "$@"
  local status=$?
  echo "-- $name: exit status $status after $((SECONDS - start)) s"
  if [ "$status" != 0 ]; then
    FAILED+=("$name (status $status$([ "$status" = 124 ] && echo ', time limit'))")
  fi
}

if [ "$QUICK" = 1 ]; then
  run_part "part 1: paper main configs" "$PART1_SECONDS" "$PYTHON" bench/gpu_check.py --quick --out "$OUT"
  run_part "part 2: speed switches" "$PART2_SECONDS" "$PYTHON" bench/switches.py --quick \
    --output "$OUT/switches.json"
  run_part "part 3: VCReg layer overhead" "$PART3_SECONDS" "$PYTHON" bench/vcreg_overhead.py --quick \
    --output "$OUT/vcreg_overhead.json"
else
  run_part "part 1: paper main configs" "$PART1_SECONDS" "$PYTHON" bench/gpu_check.py --device cuda \
    --budget-seconds "$((PART1_SECONDS - 45))" --out "$OUT"
  run_part "part 2: speed switches" "$PART2_SECONDS" "$PYTHON" bench/switches.py --device cuda \
    --backbone resnet50 --image-size 224 --channels 3 --batch 256 --output "$OUT/switches.json"
  run_part "part 3: VCReg layer overhead" "$PART3_SECONDS" "$PYTHON" bench/vcreg_overhead.py --device cuda \
    --output "$OUT/vcreg_overhead.json"
fi

# Part 4: the input pipeline of a ResNet-50 SimCLR run on ImageNet-size JPEG files: the whole trainer vs the step
# alone with per-image loading, decode + crop in the workers with the rest on the device, and nvJPEG decoding, at
# 4 and 16 loader workers (where the step, not the input, becomes the bottleneck).
if [ "$QUICK" = 1 ]; then
  run_part "part 4: input pipeline" "$PART4_SECONDS" "$PYTHON" bench/trainer_throughput.py --quick --jpeg 64 \
    --workers 1 --output "$OUT/trainer_throughput.json"
else
  run_part "part 4: input pipeline" "$PART4_SECONDS" "$PYTHON" bench/trainer_throughput.py --device cuda \
    --config stochcon/configs/simclr_imagenet_resnet50.yaml --jpeg 1536 --workers 4 16 --steps 4 --rounds 2 \
    --threads 16 batch_size=256 mixed_precision=bf16 channels_last=true augment.local_crops=0 \
    "augment.crop_scale=[0.08,1.0]" augment.brightness=0.8 augment.contrast=0.8 augment.saturation=0.8 \
    augment.hue=0.2 "augment.blur_prob=[0.5]" "augment.solarize_prob=[0.0]" --output "$OUT/trainer_throughput.json"
fi

echo
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "gpu check: FAILED: ${FAILED[*]}"
  exit 1
fi
echo "gpu check: all parts finished; JSON in $OUT"

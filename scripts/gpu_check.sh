#!/usr/bin/env bash
# Every GPU-only check, in about 9 minutes on one H200 (timed in parts on 2026-12-04: docs/speed.md). Run it whenever
# a GPU is lent; its figures go to docs/speed.md (the tables land in $OUT, default runs/gpu_check). A failing check is
# reported and the others still run; the exit status is 1 if any failed. The speed tables come last, one per batch
# size, as they take the longest.
#   bash scripts/gpu_check.sh                     # DATA_DIR: a folder with FashionMNIST/raw (default ../shared/data)
# Settings are environment variables: OUT, DATA_DIR and PHOTO_DIR (photo crops, default data/photos/train). OUT must be
# new or empty: the tests' --ckpt_path last would find an earlier run's checkpoints, and rate_distortion.py and
# speed.py refuse its files.
set -uo pipefail
case "${1:-}" in
    "") ;;
    -h | --help) sed -n '2,/^set /s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: takes no arguments, got '$*'; see bash $0 --help" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_check}
DATA_DIR=${DATA_DIR:-../shared/data}
if [ -n "$(ls -A "$OUT" 2>/dev/null)" ]; then
    echo "gpu_check.sh: $OUT holds an earlier run; set OUT to a new folder" >&2
    exit 2
fi
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())" ||
    exit 1
mkdir -p "$OUT"
failed=()
check() {  # check NAME COMMAND...: run it, and remember NAME if it fails
    local name=$1 start=$SECONDS
    shift
    "$@" || { failed+=("$name"); echo "gpu_check: $name FAILED"; }
    echo "gpu_check: $name took $((SECONDS - start)) s"
}

# 1. the tests marked gpu (16-mixed for every variant, and the other CUDA-only tests)
check "gpu tests" eval 'python -m pytest -q -m gpu 2>&1 | tee "$OUT/tests.txt"'

# 2. bf16-mixed fit (one epoch) and test of the VAE and the adversarial AE, with their metrics
data=(--data FashionMNISTDataModule --data.data_dir "$DATA_DIR")
gpu=(--trainer.accelerator gpu --trainer.devices 1 --trainer.precision bf16-mixed --trainer.enable_progress_bar false)
for config in vae aae; do
    root="$OUT/$config-bf16"
    check "$config fit" ae-lightning fit --config "configs/$config.yaml" "${data[@]}" "${gpu[@]}" \
        --trainer.max_epochs 1 --trainer.default_root_dir "$root"
    check "$config test" eval 'ae-lightning test --config "configs/$config.yaml" "${data[@]}" "${gpu[@]}" \
        --trainer.default_root_dir "$root" --ckpt_path last 2>&1 | tee "$OUT/$config-bf16-test.txt"'
done

# 3. the f8 spatial autoencoder and VAE on photos in bf16-mixed at 256 px: 20 steps, validation and test each (the
# 64 px configs run the same code and are left to the CPU tests, as the whole script ran past 10 minutes with them).
# PHOTO_DIR: a folder of photo crops (default data/photos/train); without one, 256x256 crops of scikit-learn's two
# sample photographs are written to $OUT/photos.
PHOTO_DIR=${PHOTO_DIR:-data/photos/train}
if [ ! -d "$PHOTO_DIR" ]; then
    PHOTO_DIR="$OUT/photos"
    python - "$PHOTO_DIR" <<'EOF'
import sys
from pathlib import Path

from PIL import Image
from sklearn.datasets import load_sample_images

folder = Path(sys.argv[1])
folder.mkdir(parents=True, exist_ok=True)
for p, photo in enumerate(load_sample_images().images):  # 427x640: 156 crops of 256x256 at stride 32
    for i in range(0, photo.shape[0] - 255, 32):
        for j in range(0, photo.shape[1] - 255, 32):
            Image.fromarray(photo[i : i + 256, j : j + 256]).save(folder / f"{p}-{i:03d}-{j:03d}.png")
EOF
fi
for config in photo_ae_f8 photo_vae_f8; do
    for size in 256; do
        root="$OUT/$config-$size-bf16"
        photos=(--config "configs/${config}_$size.yaml" --data.data_dir "$PHOTO_DIR" "${gpu[@]}")
        check "$config-$size fit" ae-lightning fit "${photos[@]}" --trainer.max_steps 20 \
            --trainer.limit_val_batches 2 --trainer.default_root_dir "$root"
        check "$config-$size test" eval 'ae-lightning test "${photos[@]}" --trainer.limit_test_batches 2 \
            --trainer.default_root_dir "$root" --ckpt_path last 2>&1 | tee "$OUT/$config-$size-bf16-test.txt"'
    done
done

# 4. the compression command's encode and decode throughput on the GPU and on the CPU: an f8 tokenizer and its prior
# trained briefly (the rate, not the quality, is what this times), the held-out photograph of rate_distortion.py
check "rate_distortion" python benchmarks/rate_distortion.py --points 8:256 --steps 200 --prior_steps 100 \
    --out "$OUT/rd" --jpeg_qualities 10 --webp_qualities 10
photo=$(python -c "import matplotlib; print(matplotlib.get_data_path())")/sample_data/grace_hopper.jpg
for device in cuda cpu; do
    check "encode on $device" python scripts/compress.py encode "$OUT/rd/f8_k256/prior.ckpt" "$photo" \
        "$OUT/rd/photo-$device.aelc" --device "$device"
    check "decode on $device" python scripts/compress.py decode "$OUT/rd/f8_k256/prior.ckpt" \
        "$OUT/rd/photo-$device.aelc" "$OUT/rd/photo-$device.png" --device "$device"
done > >(tee "$OUT/codec_speed.txt") 2>&1

# 5. the speed table on CUDA: both references, the default path and the fast path (fp32), one table per batch size
# (100- and 600-step runs; on an H200 these took 82 s at batch 128 with 3 rounds and 66 s at 1024 with 2)
for run in "128 3" "1024 2"; do
    read -r batch_size rounds <<<"$run"
    check "speed $batch_size" python benchmarks/speed.py --devices cuda --data-dir "$DATA_DIR" \
        --batch-sizes "$batch_size" --rounds "$rounds" --short 100 --long 600 --out "$OUT/speed-$batch_size.md"
done

if [ ${#failed[@]} -gt 0 ]; then
    printf 'gpu_check: FAILED: %s\n' "${failed[*]}"
    exit 1
fi
echo "GPU check done: $OUT"

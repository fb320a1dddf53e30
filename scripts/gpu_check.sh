#!/usr/bin/env bash
# Every GPU-only check, in one run of under 8 minutes on one GPU. Run it whenever a GPU is lent; its figures go to
# docs/speed.md (the tables land in $OUT, default runs/gpu_check).
#   bash scripts/gpu_check.sh                     # DATA_DIR: a folder with FashionMNIST/raw (default ../shared/data)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_check}
DATA_DIR=${DATA_DIR:-../shared/data}
mkdir -p "$OUT"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"

# 1. the tests marked gpu (16-mixed for every variant, and the other CUDA-only tests)
python -m pytest -q -m gpu 2>&1 | tee "$OUT/tests.txt"

# 2. bf16-mixed fit and test of the VAE and the adversarial AE, with their metrics
data=(--data FashionMNISTDataModule --data.data_dir "$DATA_DIR")
gpu=(--trainer.accelerator gpu --trainer.devices 1 --trainer.precision bf16-mixed --trainer.enable_progress_bar false)
for config in vae aae; do
    root="$OUT/$config-bf16"
    ae-lightning fit --config "configs/$config.yaml" "${data[@]}" "${gpu[@]}" --trainer.max_epochs 2 \
        --trainer.default_root_dir "$root"
    ae-lightning test --config "configs/$config.yaml" "${data[@]}" "${gpu[@]}" --trainer.default_root_dir "$root" \
        --ckpt_path last 2>&1 | tee "$OUT/$config-bf16-test.txt"
done

# 3. the speed table on CUDA: both references, the default path and the fast path (fp32)
python benchmarks/speed.py --devices cuda --data-dir "$DATA_DIR" --batch-sizes 128 1024 --out "$OUT/speed.md"
echo "GPU check done: $OUT"

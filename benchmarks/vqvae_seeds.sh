#!/usr/bin/env bash
# VQ-VAE codebook use and PSNR on Fashion-MNIST's test set over seeds, beside a plain conv autoencoder whose float32
# code holds as many bits per image (7x7 codes of a 512-code book: 49 x 9 = 441 bits; 14 floats: 448 bits).
#   bash benchmarks/vqvae_seeds.sh <data_dir> <out_dir> [steps] [seeds...]
# Prints one row per run: test/codes_used (share of the book used on the 10,000 test images), test/dead_codes,
# test/perplexity, test/psnr. Numbers only. Runs from any folder; <out_dir> must not hold an earlier run's seeds.
set -euo pipefail
data=${1:?data dir holding FashionMNIST/raw}; out=${2:?output folder}; steps=${3:-600}; shift $(( $# < 3 ? $# : 3 ))
seeds=("${@:-0 1 2}"); read -r -a seeds <<< "${seeds[*]}"
configs="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/configs"
for seed in "${seeds[@]}"; do
    for name in vqvae conv-ae-14; do
        if [[ -e "$out/$name-seed$seed" ]]; then
            echo "vqvae_seeds.sh: error: $out/$name-seed$seed exists (an earlier run): give another <out_dir>" >&2
            exit 2
        fi
    done
done
common=(--data.init_args.data_dir "$data" --data.init_args.batch_size 64 --trainer.max_steps "$steps"
        --trainer.max_epochs -1 --trainer.val_check_interval 200 --trainer.limit_val_batches 8
        --trainer.logger CSVLogger --images.every_n_epochs 0 --trainer.enable_progress_bar false)
ae=(--config "$configs/ae.yaml" --data FashionMNISTDataModule --model.init_args.network conv
    --model.init_args.hidden_dims "[32,64]" --model.init_args.latent_dim 14 --model.init_args.reconstruction mse)
run() {  # name, seed, config arguments...
    local name=$1 seed=$2; shift 2
    local root="$out/$name-seed$seed"
    ae-lightning fit "$@" "${common[@]}" --seed_everything "$seed" --trainer.default_root_dir "$root" > "$root.log" 2>&1 ||
        { echo "vqvae_seeds.sh: error: $name seed $seed: fit failed: $(tail -n 2 "$root.log" | head -n 1) (see $root.log)" >&2; exit 1; }
    ae-lightning test "$@" "${common[@]}" --seed_everything "$seed" --trainer.default_root_dir "$root-test" \
        --trainer.logger.init_args.save_dir "$root-test" --ckpt_path "$(find "$root" -name last.ckpt)" >> "$root.log" 2>&1 ||
        { echo "vqvae_seeds.sh: error: $name seed $seed: test failed (see $root.log)" >&2; exit 1; }
    python - "$name" "$seed" "$(find "$root-test" -name metrics.csv)" <<'PY'
import csv, sys
name, seed, path = sys.argv[1:]
row = {k: v for r in csv.DictReader(open(path)) for k, v in r.items() if v}
cells = [row.get(f"test/{m}", "-") for m in ("codes_used", "dead_codes", "perplexity", "psnr")]
print(f"| {name} | {seed} | " + " | ".join(c if c == "-" else f"{float(c):.4g}" for c in cells) + " |", flush=True)
PY
}
mkdir -p "$out"
echo "| model | seed | codes used | dead codes | perplexity | PSNR dB |"
echo "| --- | --- | ---: | ---: | ---: | ---: |"
for seed in "${seeds[@]}"; do
    run vqvae "$seed" --config "$configs/vqvae.yaml"
    run conv-ae-14 "$seed" "${ae[@]}"
done

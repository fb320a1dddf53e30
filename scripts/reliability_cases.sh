#!/usr/bin/env bash
# Issue 22's reliability cases, each command of the issue run against the code in TREE (default: this checkout, in
# the active environment), printing each outcome; outputs go to a new folder OUT. The full-disk case mounts a 2 MB
# tmpfs (root only). Usage: bash scripts/reliability_cases.sh [TREE] [OUT]
TREE=$(realpath "${1:-.}"); OUT=${2:-runs/reliability}
if [ -e "$OUT" ]; then echo "$OUT exists: name a new folder" >&2; exit 2; fi
mkdir -p "$OUT"; cd "$OUT"
export PYTHONPATH=$TREE OMP_NUM_THREADS=1
AE="python -m ae_lightning.cli"
C=$TREE/configs
Q="--trainer.enable_progress_bar false --trainer.enable_model_summary false"
tail2() { tail -n ${2:-3} "$1" | cut -c1-400; }
echo "## 1 max_steps resume"
$AE fit --config $C/vae.yaml --checkpoint.every_n_train_steps 7 --trainer.val_check_interval 11 --trainer.max_steps 60 $Q --trainer.default_root_dir r1 > l1a 2>&1
$AE fit --config $C/vae.yaml --checkpoint.every_n_train_steps 7 --trainer.val_check_interval 11 --trainer.max_steps 90 $Q --trainer.default_root_dir r1 --ckpt_path last > l1b 2>&1
$AE fit --config $C/vae.yaml --checkpoint.every_n_train_steps 7 --trainer.val_check_interval 11 --trainer.max_steps 90 $Q --trainer.default_root_dir r1ref > l1c 2>&1
grep -h "resuming from" l1b
python - <<'PY'
import torch, glob, os
def last(root):
    p = max(glob.glob(f"{root}/**/last.ckpt", recursive=True), key=os.path.getmtime); return torch.load(p, weights_only=True)
a, b = last("r1"), last("r1ref")
d = [k for k in b["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"][k])]
print(f"steps {a['global_step']} vs {b['global_step']}: {len(d)} of {len(b['state_dict'])} weight tensors differ")
PY
echo "## 4 weights_only log"; grep -c "weights_only" l1a l1b
echo "## 3 16-bit PNG"
python -c "
import numpy as np, os; from PIL import Image
os.makedirs('deep', exist_ok=True)
for i in range(20): Image.fromarray((np.random.default_rng(i).random((28, 28)) * 20000 + 20000).astype(np.uint16)).save(f'deep/{i}.png')
"
$AE fit --config $C/ae.yaml --data ImageFolderDataModule --data.data_dir deep --data.channels 1 --model.init_args.reconstruction mse --trainer.max_steps 2 $Q --trainer.default_root_dir r3 > l3 2>&1; echo "exit $?"; tail2 l3 2
echo "## latent_dim 0"; $AE fit --config $C/vae.yaml --model.init_args.latent_dim 0 > lw1 2>&1; echo "exit $?, $(wc -l < lw1) lines"; tail2 lw1 2
echo "## val_fraction 1"; $AE fit --config $C/vae.yaml --data.val_fraction 1 > lw2 2>&1; echo "exit $?, $(wc -l < lw2) lines"; tail2 lw2 2
echo "## empty array"; python -c "import numpy as np; np.savez('empty.npz', x=np.zeros((0, 4), np.float32), y=np.zeros(0, np.int64))"
$AE fit --config $C/tabular_anomaly_ae.yaml --data.path empty.npz > lw3 2>&1; echo "exit $?, $(wc -l < lw3) lines"; tail2 lw3 2
echo "## 4000x4000 folder"; python -c "
from PIL import Image; import os; os.makedirs('huge', exist_ok=True)
[Image.new('RGB', (4000, 4000), (i, 2*i, 3*i)).save(f'huge/{i}.png') for i in range(3)]"
$AE fit --config $C/ae.yaml --data ImageFolderDataModule --data.data_dir huge --model.init_args.reconstruction mse > lw4 2>&1; echo "exit $?, $(wc -l < lw4) lines"; tail2 lw4 2
echo "## refused resume leaves a folder"; $AE fit --config $C/vae.yaml --trainer.default_root_dir r1 --ckpt_path last --data.batch_size 64 $Q > lw5 2>&1; echo "exit $?"; tail2 lw5 2; ls r1/lightning_logs
echo "## precision 16-mixed on CPU"; $AE fit --config $C/ae.yaml --trainer.precision 16-mixed --trainer.max_steps 2 $Q --trainer.default_root_dir r6 > lw6 2>&1; echo "exit $?"; tail2 lw6 2; grep -h precision r6/lightning_logs/*/config.yaml 2>/dev/null
echo "## another dataset on resume"; $AE fit --config $C/vae.yaml --trainer.default_root_dir r1 --ckpt_path last --data FashionMNISTDataModule --data.data_dir ${SHARED_DATA:-$TREE/../shared/data} $Q > lw7 2>&1; echo "exit $?"; tail2 lw7 2
echo "## full disk"; mkdir -p small && mount -t tmpfs -o size=2M tmpfs small && \
$AE fit --config $C/vae.yaml --trainer.max_steps 30 $Q --trainer.default_root_dir small > lw8 2>&1; echo "exit $?"; tail2 lw8 2; ls -la small/lightning_logs/*/checkpoints 2>/dev/null; umount small

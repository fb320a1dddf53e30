#!/usr/bin/env bash
# The body of the sbatch templates in this folder (submit them from the repository root):
#
#   CONFIG=configs/vae.yaml sbatch scripts/slurm/single_node.sbatch [more ae-lightning fit arguments]
#
# Starts one `ae-lightning fit` task per device with srun: Lightning reads rank and world size from SLURM
# (SLURMEnvironment); as the job is submitted with --signal=SIGUSR1@<seconds> and --requeue, ae-lightning's SlurmRequeue
# callback handles the signal: every rank checkpoints at the next step boundary into <run>/hpc_ckpt_<n>.ckpt, and rank
# 0 requeues the job (`scontrol requeue`). The requeued job runs this again with
# the same job id, so the same run folder and the same W&B run id; `--ckpt_path last` resumes from the furthest trained
# checkpoint there (the HPC one, or last.ckpt after a node failure); on the first start there is none and it starts
# from scratch.
#
# Environment:
#   CONFIG       the YAML config (required)
#   ACCELERATOR  gpu (default) or cpu
#   RUN_DIR      the run folder, default runs/<job name>-<job id>
#   LOGGER       wandb (default: W&B run id slurm-<cluster>-<job id>, resumed after a requeue), or csv (each start
#                logs into a new <run folder>/lightning_logs/version_<N>: CSVLogger cannot append to a metrics.csv)
#   WANDB_PROJECT  the W&B project, default ae-lightning
set -euo pipefail
: "${CONFIG:?set CONFIG to a YAML config, e.g. CONFIG=configs/vae.yaml sbatch scripts/slurm/single_node.sbatch}"
: "${SLURM_JOB_ID:?run this through sbatch}"
ACCELERATOR=${ACCELERATOR:-gpu}
RUN_DIR=${RUN_DIR:-runs/${SLURM_JOB_NAME}-${SLURM_JOB_ID}}
LOGGER=${LOGGER:-wandb}
RUN_ID=slurm-${SLURM_CLUSTER_NAME:-cluster}-${SLURM_JOB_ID}

case "$LOGGER" in
    wandb) logger=(--trainer.logger WandbLogger --trainer.logger.init_args.id "$RUN_ID"
                   --trainer.logger.init_args.project "${WANDB_PROJECT:-ae-lightning}"
                   --trainer.logger.init_args.save_dir "$RUN_DIR" --trainer.logger.dict_kwargs.resume allow) ;;
    csv) logger=(--trainer.logger CSVLogger --trainer.logger.init_args.save_dir "$RUN_DIR") ;;
    *) echo "LOGGER must be wandb or csv, got $LOGGER" >&2; exit 2 ;;
esac

# From Slurm 22.05, srun no longer takes --cpus-per-task from the job (SLURM_CPUS_PER_TASK): without this, every task
# would be bound to one CPU, its data loader workers with it. SRUN_CPUS_PER_TASK, if you set it, wins.
if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then export SRUN_CPUS_PER_TASK=${SRUN_CPUS_PER_TASK:-$SLURM_CPUS_PER_TASK}; fi

echo "job $SLURM_JOB_ID, start $((${SLURM_RESTART_COUNT:-0} + 1)): $SLURM_NNODES node(s) x $SLURM_NTASKS_PER_NODE" \
    "task(s), run folder $RUN_DIR"
# --kill-on-bad-exit: a rank that fails takes the others down instead of leaving them waiting in a collective.
srun --kill-on-bad-exit=1 ae-lightning fit --config "$CONFIG" \
    --trainer.accelerator "$ACCELERATOR" --trainer.strategy ddp \
    --trainer.devices "$SLURM_NTASKS_PER_NODE" --trainer.num_nodes "$SLURM_NNODES" \
    --trainer.default_root_dir "$RUN_DIR" "${logger[@]}" \
    --ckpt_path last "$@"

"""Rerun the report runs of ``docs/family.md``: the IWAE objective, super-resolution and the RBM-pretrained deep AE.

Each run is ``ae-lightning fit`` on a config (in this process), then ``test`` of the final weights; the test metrics
and the fit's wall time go to ``<out>/<section>.json``, pictures to ``<out>/``::

    python scripts/family_report.py iwae --epochs 30                     # the issue's full IWAE runs
    python scripts/family_report.py superres deep_ae --epochs 5 --pretrain-epochs 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from unittest import mock

import torch

from ae_lightning.cli import AutoencoderCLI

ROOT = Path(__file__).parents[1]


def fit_and_test(name: str, config: str, out: Path, *args: str) -> dict[str, float]:
    """Fit ``configs/<config>.yaml`` with ``args``, test the final weights; the test metrics and ``fit_seconds``."""
    run = [
        "--config", str(ROOT / "configs" / f"{config}.yaml"), "--trainer.default_root_dir", str(out / name),
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", *args,
    ]
    with mock.patch("sys.argv", ["ae-lightning"]):
        cli = AutoencoderCLI(args=run, run=False)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    seconds = time.perf_counter() - start
    cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    metrics = {key: float(value) for key, value in cli.trainer.callback_metrics.items() if key.startswith("test/")}
    metrics["fit_seconds"] = seconds
    metrics["epochs"] = cli.trainer.current_epoch
    torch.save(cli.model.state_dict(), out / name / "final_state.pt")
    print(name, json.dumps(metrics), flush=True)
    return metrics


def save(out: Path, section: str, results: dict) -> None:
    path = out / f"{section}.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**old, **results}, indent=1))


def iwae(out: Path, data: list[str], epochs: int, ks: list[int]) -> None:
    for k in ks:
        result = fit_and_test(f"iwae_k{k}", "iwae", out, *data, "--model.init_args.iw_samples", str(k),
                              "--trainer.max_epochs", str(epochs))
        save(out, "iwae", {f"k{k}": result})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sections", nargs="+", choices=["iwae", "superres", "deep_ae"])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "family")
    parser.add_argument("--data_dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--epochs", type=int, default=30, help="IWAE epochs; super-resolution and fine-tuning epochs")
    parser.add_argument("--iw-samples", type=int, nargs="+", default=[1, 5, 50])
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    fashion = ["--data", "FashionMNISTDataModule", "--data.data_dir", args.data_dir]
    if "iwae" in args.sections:
        iwae(args.out, fashion, args.epochs, args.iw_samples)


if __name__ == "__main__":
    main()

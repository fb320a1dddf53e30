"""What Lightning's callback dispatch costs per training step with the command's callbacks, against a bare Trainer.

    python benchmarks/hook_cost.py --data-dir ../shared/data

Lightning calls six callback hooks per training step (batch start and end, before and after backward, before the
optimizer step and before zero_grad); each call visits every callback of the trainer. This times one such call
(``on_before_zero_grad``, which none of them implements) through Lightning's dispatcher for the trainer that
``ae-lightning fit --config configs/ae.yaml`` builds and for ``lightning.Trainer(logger=False,
enable_checkpointing=False, enable_model_summary=False)`` (the benchmark's minimal LightningModule's), and prints the
callbacks and the microseconds per call (best of 5 repeats of 20,000 calls). The dispatcher is Lightning's private
one (``lightning_internals.callback_dispatcher``): a benchmark of Lightning itself.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import timeit
from pathlib import Path
from unittest import mock

import lightning as L

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"), help="folder with FashionMNIST/")
    args = parser.parse_args()
    from ae_lightning.cli import AutoencoderCLI
    from ae_lightning.lightning_internals import callback_dispatcher

    with tempfile.TemporaryDirectory() as root, mock.patch("sys.argv", ["ae-lightning"]):
        command_args = ["--config", str(ROOT / "configs" / "ae.yaml"), "--data", "FashionMNISTDataModule",
                        "--data.data_dir", args.data_dir, "--trainer.default_root_dir", root]  # fmt: skip
        command = AutoencoderCLI(args=command_args, run=False).trainer
        bare = L.Trainer(logger=False, enable_checkpointing=False, enable_model_summary=False)
        dispatch, calls = callback_dispatcher(), 20_000
        for name, trainer in (("ae-lightning fit", command), ("minimal Trainer", bare)):
            hook = functools.partial(dispatch, trainer, "on_before_zero_grad", None)
            seconds = min(timeit.repeat(hook, number=calls, repeat=5)) / calls
            names = ", ".join(type(callback).__name__ for callback in trainer.callbacks)
            print(f"{name}: {len(trainer.callbacks)} callbacks ({names}): {seconds * 1e6:.1f} us per hook call")


if __name__ == "__main__":
    main()

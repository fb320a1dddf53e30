"""What each of the fast path's per-step savings is worth, in microseconds per training step.

Each row times the old and the new way of one piece of per-step work, many times in a loop, and multiplies by how often
a training step does it (counted in Lightning 2.6's automatic-optimization loop with the ``ae-lightning`` command's
callbacks). Lightning's own loop costs a few hundred microseconds per step besides; scripts/benchmark_speed.py measures
the whole step against a hand-written loop.

    python benchmarks/step_overhead.py
"""

from __future__ import annotations

import os
import timeit

import lightning as L
import torch
from lightning.pytorch.profilers import PassThroughProfiler
from torch import nn

from ae_lightning import Autoencoder
from ae_lightning.overhead import NoProfiler
from datamodules import FashionMNISTDataModule

# Per training step, in Lightning 2.6 with the command's nine callbacks: profiled hook calls (counted with
# sys.setprofile), hook-name assignments on the module, CUDA availability checks (Adam's step), batch transfers.
PROFILED_CALLS_PER_STEP = 80
HOOK_NAME_SETS_PER_STEP = 44


def microseconds(statement, number: int = 20000) -> float:
    return min(timeit.repeat(statement, number=number, repeat=5)) / number * 1e6


def profiler_context(profiler: PassThroughProfiler) -> None:
    with profiler.profile("[Callback]ModelCheckpoint.on_train_batch_end"):
        pass


def main() -> None:
    rows = []
    passthrough, cheap = PassThroughProfiler(), NoProfiler()
    rows.append(
        (
            "profiler context per hook call (x80)",
            PROFILED_CALLS_PER_STEP * microseconds(lambda: profiler_context(passthrough)),
            PROFILED_CALLS_PER_STEP * microseconds(lambda: profiler_context(cheap)),
        )
    )

    model = Autoencoder()
    rows.append(
        (
            "hook name on the module (x44)",
            HOOK_NAME_SETS_PER_STEP * microseconds(lambda: nn.Module.__setattr__(model, "_current_fx_name", "x")),
            HOOK_NAME_SETS_PER_STEP * microseconds(lambda: setattr(model, "_current_fx_name", "x")),
        )
    )

    os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
    with_check = microseconds(torch.cuda.is_available, number=2000)
    del os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"]
    rows.append(("CUDA check in Adam's step (x1)", with_check, microseconds(torch.cuda.is_available)))

    datamodule = FashionMNISTDataModule()
    batch = (torch.rand(32, 1, 28, 28), torch.zeros(32, dtype=torch.long), torch.arange(32))
    cpu = torch.device("cpu")
    rows.append(
        (
            "batch transfer (x1)",
            microseconds(lambda: L.LightningDataModule.transfer_batch_to_device(datamodule, batch, cpu, 0)),
            microseconds(lambda: datamodule.transfer_batch_to_device(batch, cpu, 0)),
        )
    )

    terms = {"loss": torch.tensor(1.0, requires_grad=True) * 2, "recon": torch.tensor(1.0)}
    first_bad, bad_values, kept = torch.tensor(-1), torch.zeros(2), []

    def record_every_step() -> None:  # the guard's former per-step record: a few tensor operations
        nonlocal first_bad, bad_values
        values = torch.stack([value.detach().float().reshape(()) for value in terms.values()])
        first = (first_bad < 0) & ~torch.isfinite(values).all()
        first_bad = torch.where(first, 3, first_bad)
        bad_values = torch.where(first, values, bad_values)

    def keep_terms() -> None:  # now: keep the detached terms, check them every log_every_n_steps steps
        kept.append({name: value.detach() for name, value in terms.items()})
        if len(kept) >= 50:
            kept.clear()

    rows.append(("non-finite guard record (x1)", microseconds(record_every_step), microseconds(keep_terms)))

    print(f"torch threads: {torch.get_num_threads()}, torch {torch.__version__}")
    print("| per training step | before (us) | after (us) | saved (us) |")
    print("| --- | ---: | ---: | ---: |")
    for name, before, after in rows:
        print(f"| {name} | {before:.1f} | {after:.1f} | {before - after:.1f} |")
    total = sum(before - after for _, before, after in rows)
    print(f"| total | | | {total:.1f} |")


if __name__ == "__main__":
    main()

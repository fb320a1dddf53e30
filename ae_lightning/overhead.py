"""Keeping the framework's per-step cost small.

An MNIST-size autoencoder step takes one or two milliseconds on a CPU, so the few hundred Python calls that Lightning
makes around each step are a large share of it. What is here removes the parts of that cost which buy nothing:

* :class:`NoProfiler`, the ``ae-lightning`` command's profiler when none is asked for. Lightning wraps every hook
  call (about 80 a step) in ``trainer.profiler.profile(...)``; its default ``PassThroughProfiler`` builds a fresh
  generator-based context manager each time, this one returns one shared do-nothing context.
* :func:`skip_nvml_check_without_nvml`, run when :mod:`ae_lightning` is imported. Lightning sets
  ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` so that ``torch.cuda.is_available()`` asks NVML instead of initializing CUDA
  (which would break forked workers). On a machine without NVML, such as a CPU machine with a CUDA build of torch, that
  check tries to load the missing library on every call (about 40 us) and then falls back to the CUDA runtime anyway;
  and ``torch.optim.Adam`` asks on every step.

Two more pieces live where they act: ``AutoencoderModule.__setattr__`` (:mod:`ae_lightning.base`) stores the hook
name that Lightning records on the module around every hook call (about 45 a step) as a plain attribute, since
``nn.Module.__setattr__`` costs ten times that; and ``ImageDataModule.transfer_batch_to_device``
(:mod:`datamodules.base`) passes batches that its loader built on the training device straight through.
``scripts/benchmark_speed.py`` measures the result against a hand-written loop (``docs/speed.md``).
"""

from __future__ import annotations

import ctypes
import os

import torch
from lightning.pytorch.profilers import PassThroughProfiler

_NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"


class _NullContext:
    """A reusable context manager that does nothing (``contextlib.nullcontext`` without the per-use object)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: object) -> bool:
        return False


_NULL_CONTEXT = _NullContext()


class NoProfiler(PassThroughProfiler):
    """Lightning's pass-through profiler, without building a context manager per hook call.

    Pass ``--trainer.profiler simple`` (or ``advanced``, ``pytorch``) to profile a run instead.
    """

    def profile(self, action_name: str) -> _NullContext:  # type: ignore[override]
        return _NULL_CONTEXT


def skip_nvml_check_without_nvml() -> bool:
    """Unset ``PYTORCH_NVML_BASED_CUDA_CHECK`` where NVML cannot be loaded, where it only costs time.

    Without NVML, torch's NVML-based check fails and falls back to ``cudaGetDeviceCount``, which is exactly what it
    does without the variable: the answer and the fork safety are the same, minus a failed library load per call.

    Returns:
        Whether the variable was unset.
    """
    if os.environ.get(_NVML_CHECK) != "1" or not torch.backends.cuda.is_built():
        return False
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        del os.environ[_NVML_CHECK]
        return True
    return False


__all__ = ["NoProfiler", "skip_nvml_check_without_nvml"]

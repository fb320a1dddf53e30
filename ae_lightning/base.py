"""The base LightningModule: the shared step, logging, evaluation, prediction and optimizers of every variant."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar, Literal

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torch.optim.lr_scheduler import ReduceLROnPlateau

from ae_lightning import losses, networks
from ae_lightning.metrics import ReconstructionMetrics
from ae_lightning.networks import Network, build_decoder, build_encoder, check_network

Batch = tuple[Tensor, Tensor, Tensor]
Stage = Literal["train", "val", "test"]
Reconstruction = Literal["bce", "mse"]


class AutoencoderModule(L.LightningModule):
    """Base of every variant: it owns the shared step, logging, evaluation, prediction and optimizers.

    A variant builds its networks and implements :meth:`loss_terms`, which returns a dict of named per-batch terms
    with ``loss`` among them; the base logs each as ``train/<term>``, ``val/<term>`` and ``test/<term>``. Every
    variant offers ``encode(x) -> [B, latent_dim]`` and ``decode(z) -> [B, C, H, W]`` in [0, 1]; generative variants
    (``is_generative``) also offer ``sample(n)``.

    Args:
        input_shape: ``(C, H, W)`` of images or ``(D,)`` of feature vectors; the CLI links it from the datamodule.
        latent_dim: size of the code.
        network: ``mlp`` or ``conv`` encoder/decoder.
        hidden_dims: widths of the MLP's hidden layers, or channels of the convolutions; the decoder mirrors them.
        optimizer: optimizer factory, called with the parameters (``class_path`` + ``init_args`` in YAML).
        lr_scheduler: optional scheduler factory, called with the optimizer; stepped every epoch (a
            ``ReduceLROnPlateau`` with ``val/loss``).
        compile_networks: ``torch.compile`` the networks (:meth:`networks`) in place when fit, validate, test or
            predict starts; the weights' names stay the same, so checkpoints load either way. Off by default: on a
            2-core CPU it made the 784-256-64-20 MLP's training slower (``scripts/benchmark_speed.py --compile``).
        steps_per_batch: optimizer steps per Lightning training batch. With 1, the default, each batch is one step of
            Lightning's automatic optimization (its manual optimization for the adversarial autoencoder). With
            ``K > 1`` ae-lightning's datamodules deliver ``K`` consecutive batches of ``batch_size`` images per
            Lightning batch and the model takes one optimizer step on each, under manual optimization: the same
            steps on the same batches (the same weights, to the bit on a CPU), with Lightning's per-batch work (its
            loop, hooks and callbacks, several hundred microseconds) paid once per ``K`` steps. ``global_step``,
            ``max_steps`` and ``ModelCheckpoint(every_n_train_steps=N)`` count optimizer steps (fit refuses to
            start unless ``K`` divides ``N`` and the steps of an epoch, as the step would jump over multiples of
            ``N``). The settings that count training batches (``log_every_n_steps``, an integer
            ``val_check_interval`` or ``limit_train_batches``, the loggers' step axis, the progress bar) count
            Lightning batches of ``K`` steps, and each logged training term is the mean over its ``K`` steps.
            Schedulers step every epoch, as with 1. The Trainer's ``gradient_clip_val`` and
            ``accumulate_grad_batches`` need automatic optimization, so ``K = 1``. See ``docs/speed.md``.
    """

    is_generative: ClassVar[bool] = False
    # Whether some backward pass of a training step reaches only part of the weights (DDP must then look for unused
    # parameters, an extra walk over the autograd graph per backward).
    partial_backward: ClassVar[bool] = False

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 28, 28),
        latent_dim: int = 20,
        network: Network = "mlp",
        hidden_dims: Sequence[int] = (256, 64),
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        compile_networks: bool = False,
        steps_per_batch: int = 1,
    ) -> None:
        super().__init__()
        check_network(network, hidden_dims, latent_dim)
        if isinstance(steps_per_batch, bool) or not isinstance(steps_per_batch, int) or steps_per_batch < 1:
            raise ValueError(f"steps_per_batch must be a positive integer, got {steps_per_batch!r}")
        networks.check_input_shape(input_shape, network)
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.input_shape = tuple(input_shape)
        self.latent_dim = latent_dim
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.compile_networks = compile_networks
        self.steps_per_batch = steps_per_batch
        # Several optimizer steps per Lightning batch need manual optimization (``training_step`` takes them).
        self.automatic_optimization = steps_per_batch == 1
        self.test_reconstruction = ReconstructionMetrics(prefix="test/", images=len(self.input_shape) == 3)
        self._input_checked = False

    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning sets ``_current_fx_name`` (a str or None) around every hook call, about 45 times a step. It is
        # never a parameter, buffer or module, so the bookkeeping of ``nn.Module.__setattr__`` (ten times the cost
        # of a plain attribute) buys nothing for it; see ae_lightning.overhead.
        if name == "_current_fx_name":
            self.__dict__[name] = value
        else:
            super().__setattr__(name, value)

    # --- the public API ---------------------------------------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        """Codes ``[B, latent_dim]`` of images ``x``."""
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        """Images ``[B, C, H, W]`` in [0, 1] (pixel means) decoded from codes ``z``."""
        return networks.decoder_mean(self.decoder(z), self.input_shape)

    def forward(self, x: Tensor) -> Tensor:
        """Reconstructions of ``x``, in [0, 1]."""
        return self.decode(self.encode(x))

    def sample(self, n: int) -> Tensor:
        """``n`` images decoded from prior samples (generative variants only)."""
        raise NotImplementedError(f"{type(self).__name__} is not a generative model: it has no prior to sample from")

    def loss_terms(self, x: Tensor, labels: Tensor, indices: Tensor) -> dict[str, Tensor]:
        """Named loss terms of one batch, averaged over it; ``loss`` is the one optimized."""
        raise NotImplementedError

    def networks(self) -> list[nn.Module]:
        """The model's networks: its ``encoder``, ``decoder`` and ``discriminator``, those it has."""
        found = (getattr(self, name, None) for name in ("encoder", "decoder", "discriminator"))
        return [network for network in found if isinstance(network, nn.Module)]

    def anomaly_score(self, x: Tensor) -> Tensor:
        """Per-sample anomaly score (higher = more anomalous): the reconstruction's mean squared error."""
        return losses.mean_squared_error(self(x), x)

    # --- steps ------------------------------------------------------------------------------------------------------
    def training_step(self, batch: Batch | list[Batch], batch_idx: int) -> dict[str, Tensor]:
        # All named terms, not only ``loss``: callbacks (the non-finite guard) see them as ``outputs``.
        if self.automatic_optimization:
            return self._shared_step(batch, "train")  # Lightning's automatic optimization steps on ``loss``
        # Manual optimization: one step per batch of the group (``steps_per_batch``); another loader's plain batch
        # (a sequence of tensors) is a group of one.
        group = [batch] if isinstance(batch[0], Tensor) else batch
        if self.trainer.max_steps >= 0:  # a group may hold more steps than max_steps leaves
            group = group[: self.trainer.max_steps - self.trainer.global_step]
        if not group:
            return {}
        if not self._input_checked:
            self.check_input(group[0][0])
            self._input_checked = True
        steps = [self.optimization_step(step_batch) for step_batch in group]
        if len(steps) == 1:
            terms = steps[0]
        else:
            terms = {name: torch.stack([step[name] for step in steps]).mean() for name in steps[0]}
        self.log_terms(terms, "train", batch_size=sum(len(step_batch[0]) for step_batch in group))
        return terms

    def optimization_step(self, batch: Batch) -> dict[str, Tensor]:
        """One optimizer step on ``batch`` under manual optimization; returns the batch's loss terms, detached."""
        optimizer = self.optimizers()
        optimizer.zero_grad()
        terms = self.loss_terms(*batch)
        self.manual_backward(terms["loss"])
        optimizer.step()
        return {name: value.detach() for name, value in terms.items()}

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._shared_step(batch, "test")
        x = batch[0]
        # test/recon_mse, test/recon_bce (per pixel), test/psnr and test/ssim, computed over the whole test set
        self.test_reconstruction.update(self(x).float(), x)
        self.log_dict(self.test_reconstruction, batch_size=len(x))
        for name, value in self.test_metrics(x).items():
            self.log(f"test/{name}", value, batch_size=len(x), sync_dist=True)

    def test_metrics(self, x: Tensor) -> dict[str, Tensor]:
        """Extra per-batch test metrics of a variant, averaged over the test set (e.g. the VAE's ``nll``)."""
        return {}

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        x, labels, indices = batch
        z = self.encode(x)
        return {
            "z": z,
            "label": labels,
            "index": indices,
            "recon_error": losses.mean_squared_error(self.decode(z), x),
            "anomaly_score": self.anomaly_score(x),
        }

    def _shared_step(self, batch: Batch, stage: Stage) -> dict[str, Tensor]:
        x, labels, indices = batch
        if not self._input_checked:
            self.check_input(x)
            self._input_checked = True
        terms = self.loss_terms(x, labels, indices)
        self.log_terms(terms, stage, batch_size=len(x))
        return terms

    def log_terms(self, terms: dict[str, Tensor], stage: Stage, batch_size: int) -> None:
        """Log each term as ``<stage>/<name>``, ``loss`` also in the progress bar.

        Validation and test terms are averaged over the epoch and reduced across ranks once at its end. Training
        terms are logged per step, without a cross-rank sync, and only on the steps whose logs Lightning writes
        (every ``log_every_n_steps``): each ``self.log`` call costs about a millisecond of Python, which at MNIST
        scale is a large share of a step.
        """
        training = stage == "train"
        if training and self._trainer is not None and not self.trainer._logger_connector.should_update_logs:
            return
        for name, value in terms.items():
            self.log(f"{stage}/{name}", value, prog_bar=name == "loss", on_step=training, on_epoch=not training,
                     sync_dist=not training, batch_size=batch_size)

    def check_input(self, x: Tensor) -> None:
        """Raise a ValueError naming the mismatch if ``x`` is not a batch of ``input_shape`` images."""
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"{type(self).__name__} expects images of shape {self.input_shape}, got a batch of shape "
                f"{tuple(x.shape)}; set model input_shape to match the data"
            )

    # --- optimizers and hooks ---------------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        return self.build_optimizer(self.parameters(), self.optimizer_factory, self.lr_scheduler_factory)

    def build_optimizer(
        self,
        parameters: Iterable[nn.Parameter] | Iterable[dict[str, Any]],
        optimizer: OptimizerCallable,
        lr_scheduler: LRSchedulerCallable | None,
    ) -> dict[str, Any]:
        """One optimizer (and scheduler) configuration; a model with several optimizers returns a list of these."""
        built = optimizer(parameters)
        if lr_scheduler is None:
            return {"optimizer": built}
        scheduler = {"scheduler": lr_scheduler(built)}
        if self.automatic_optimization:  # under manual optimization ``on_train_epoch_end`` steps it
            scheduler["monitor"] = "val/loss"
        return {"optimizer": built, "lr_scheduler": scheduler}

    def on_train_epoch_end(self) -> None:
        if self.automatic_optimization:
            return  # Lightning steps the schedulers
        schedulers = self.lr_schedulers() or []
        for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
            if isinstance(scheduler, ReduceLROnPlateau):
                if "val/loss" in self.trainer.callback_metrics:  # validation at the epoch's end has run by now
                    scheduler.step(self.trainer.callback_metrics["val/loss"])
            else:
                scheduler.step()

    def configure_model(self) -> None:
        if self.compile_networks:
            for network in self.networks():
                network.compile()  # in place: ``torch.compile(network)`` would rename every weight ``_orig_mod.*``

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        data_shape = getattr(datamodule, "input_shape", None)
        if data_shape is not None and tuple(data_shape) != self.input_shape:
            raise ValueError(
                f"{type(self).__name__} was built for images of shape {self.input_shape}, but "
                f"{type(datamodule).__name__} yields {tuple(data_shape)}"
            )

    def on_train_start(self) -> None:
        if self.steps_per_batch > 1:
            self._check_step_checkpoints()

    def _check_step_checkpoints(self) -> None:
        """Refuse a ``ModelCheckpoint(every_n_train_steps=N)`` that the global step would jump over.

        It saves when ``global_step % N == 0`` at the end of a Lightning batch, which advances the step by
        ``steps_per_batch`` K, and by less at an epoch's last batch when K does not divide the epoch's steps.
        """
        trainer, steps = self.trainer, self.steps_per_batch
        loader = trainer.train_dataloader
        epoch_steps = getattr(loader, "batches_per_epoch", None)
        if epoch_steps is not None and trainer.num_training_batches < len(loader):  # limit_train_batches: whole Ks
            epoch_steps = trainer.num_training_batches * steps
        for callback in trainer.checkpoint_callbacks:
            every = getattr(callback, "_every_n_train_steps", 0)
            if not every:
                continue
            if every % steps or (epoch_steps is not None and epoch_steps % steps):
                fits = math.gcd(every, epoch_steps) if epoch_steps is not None else every
                raise ValueError(
                    f"ModelCheckpoint(every_n_train_steps={every}) saves when the global step is a multiple of "
                    f"{every}, but with steps_per_batch={steps} the step advances {steps} at a time"
                    + (f" within epochs of {epoch_steps} steps" if epoch_steps is not None else "")
                    + f" and would pass over some multiples. Set steps_per_batch to a divisor of {fits}, e.g. 1"
                )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["ae_lightning_class"] = _class_path(type(self))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        stored = checkpoint.get("ae_lightning_class")
        if stored is not None and stored != _class_path(type(self)):
            raise ValueError(f"the checkpoint holds a {stored}, not a {_class_path(type(self))}")


class DeterministicAutoencoder(AutoencoderModule):
    """Base of the autoencoders with a deterministic code: an encoder to ``latent_dim`` and a decoder back.

    Args:
        reconstruction: ``bce`` (binary cross-entropy with the pixel intensities, summed per image) or ``mse``
            (squared error summed per image).
        dropout: dropout rate after each hidden layer of encoder and decoder, in training only.
        **kwargs: the :class:`AutoencoderModule` arguments.
    """

    def __init__(self, reconstruction: Reconstruction = "bce", dropout: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if reconstruction not in ("bce", "mse"):
            raise ValueError(f"reconstruction must be 'bce' or 'mse', got {reconstruction!r}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        if reconstruction == "bce" and len(self.input_shape) == 1:
            raise ValueError(
                f"reconstruction: bce needs pixels in [0, 1], but input_shape {self.input_shape} is feature vectors; "
                "use reconstruction: mse"
            )
        self.reconstruction = reconstruction
        network, hidden_dims = self.hparams.network, self.hparams.hidden_dims
        self.encoder = build_encoder(network, self.input_shape, hidden_dims, self.latent_dim, dropout)
        self.decoder = build_decoder(network, self.latent_dim, hidden_dims, self.input_shape, dropout)

    def reconstruction_loss(self, logits: Tensor, x: Tensor) -> Tensor:
        """Per-image reconstruction loss of decoder ``logits`` against targets ``x``."""
        if self.reconstruction == "bce":
            return -losses.bernoulli_log_likelihood(logits, x)
        mean = networks.decoder_mean(logits, self.input_shape)
        return losses.squared_error(mean, x, event_ndim=len(self.input_shape))


def _class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


__all__ = ["AutoencoderModule", "DeterministicAutoencoder"]

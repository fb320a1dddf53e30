"""The base LightningModule: the shared step, logging, evaluation, prediction and optimizers of every variant."""

from __future__ import annotations

import abc
import contextlib
import importlib
import inspect
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, ClassVar, Literal

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torch.optim.lr_scheduler import ReduceLROnPlateau

from ae_lightning.blocks import losses, networks
from ae_lightning.blocks.networks import Network, build_decoder, build_encoder, check_network
from ae_lightning.blocks.spatial import SpatialOptions
from ae_lightning.checks import check_number
from ae_lightning.evaluation.metrics import ReconstructionMetrics

Batch = tuple[Tensor, Tensor, Tensor]
Stage = Literal["train", "val", "test"]
Reconstruction = Literal["bce", "mse"]


class AutoencoderModule(L.LightningModule, abc.ABC):
    """Base of every variant: it owns the shared step, logging, evaluation, prediction and optimizers.

    A variant builds its networks and implements :meth:`loss_terms` (a dict of per-batch terms with ``loss``), logged as
    ``train/``, ``val/`` and ``test/<term>``. Every variant offers ``encode(x) -> [B, *latent_shape]`` and
    ``decode(z)`` in [0, 1]; generative ones (``is_generative``) also ``sample(n)``. ``latent_shape`` is
    ``(latent_dim,)``, or ``(latent_dim, H / f, W / f)`` for ``network: spatial`` (``docs/spatial.md``).

    Args:
        input_shape: ``(C, H, W)`` images or ``(D,)`` feature vectors; the CLI links it from the datamodule.
        latent_dim: size of the code; for ``network: spatial``, its channels.
        network: ``mlp``, ``conv`` or ``spatial`` (ResNet levels to codes ``[latent_dim, H / f, W / f]``).
        hidden_dims: widths of the MLP's hidden layers, or channels of the convolutions (of each resolution level for
            ``spatial``: f = 2^(levels - 1)); the decoder mirrors them.
        spatial: ``num_res_blocks`` (default 2) and ``attention`` (default true) of ``network: spatial``.
        optimizer: optimizer factory, called with the parameters (``class_path`` + ``init_args`` in YAML).
        lr_scheduler: optional scheduler factory, stepped every epoch (``ReduceLROnPlateau`` on ``val/loss``).
        compile_networks: ``torch.compile`` the networks in place when a stage starts (checkpoints load either way).
    """

    is_generative: ClassVar[bool] = False
    # Whether some backward pass of a training step reaches only part of the weights (DDP must then look for unused
    # parameters, an extra walk over the autograd graph per backward).
    partial_backward: ClassVar[bool] = False
    # Why a variant needs flat codes ``[latent_dim]``, if it does: ``network: spatial`` is then refused with it.
    flat_codes_only: ClassVar[str | None] = None

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 28, 28),
        latent_dim: int = 20,
        network: Network = "mlp",
        hidden_dims: Sequence[int] = (256, 64),
        spatial: SpatialOptions | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        compile_networks: bool = False,
    ) -> None:
        super().__init__()
        check_network(network, hidden_dims, latent_dim)
        if network == "spatial" and self.flat_codes_only:
            raise ValueError(
                f"{type(self).__name__} cannot use network: spatial: {self.flat_codes_only}; use network: mlp or conv"
            )
        if spatial is not None and network != "spatial":
            raise ValueError(f"the spatial settings {dict(spatial)} are for network: spatial, not {network!r}")
        networks.check_input_shape(input_shape, network)
        networks.check_network_size(network, input_shape, hidden_dims, latent_dim)
        # Optimizer and scheduler factories are not hyperparameters: a checkpoint must load without them.
        self.save_hyperparameters(ignore=_factory_arguments(type(self)))
        self.input_shape = tuple(input_shape)
        self.latent_dim = latent_dim
        self.latent_shape = networks.latent_shape(network, input_shape, latent_dim, hidden_dims)
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.compile_networks = compile_networks
        self.test_reconstruction = ReconstructionMetrics(prefix="test/", images=len(self.input_shape) == 3)
        self._input_checked = False

    # --- the public API ---------------------------------------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        """Codes ``[B, *latent_shape]`` of images ``x`` (spatial codes of other sizes divisible by f too)."""
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

    @abc.abstractmethod
    def loss_terms(self, x: Tensor, labels: Tensor, indices: Tensor) -> dict[str, Tensor]:
        """Named loss terms of one batch, averaged over it; ``loss`` is the one optimized."""

    def networks(self) -> list[nn.Module]:
        """The model's networks: its ``encoder``, ``decoder`` and ``discriminator``, those it has."""
        found = (getattr(self, name, None) for name in ("encoder", "decoder", "discriminator"))
        return [network for network in found if isinstance(network, nn.Module)]

    def reconstruction_rows(self, x: Tensor) -> tuple[Tensor, ...]:
        """The rows of the reconstruction picture of images ``x``: the images and their reconstructions."""
        return x, self(x)

    def anomaly_score(self, x: Tensor) -> Tensor:
        """Per-sample anomaly score (higher = more anomalous): the reconstruction's mean squared error."""
        return losses.mean_squared_error(self(x), x)

    # --- steps ------------------------------------------------------------------------------------------------------
    def training_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        # All named terms, not only ``loss``: callbacks (the non-finite guard) see them as ``outputs``.
        if self.automatic_optimization:
            return self._shared_step(batch, "train")  # Lightning's automatic optimization steps on ``loss``
        self._check_input_once(batch[0])
        terms = self.optimization_step(batch)
        self.log_terms(terms, "train", batch_size=len(batch[0]))
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
        with self.evaluation_randomness(batch_idx):
            self._shared_step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        with self.evaluation_randomness(batch_idx):
            self._test_step(batch)

    def _test_step(self, batch: Batch) -> None:
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
        with self.evaluation_randomness(batch_idx):
            return self._predict_step(batch)

    def _predict_step(self, batch: Batch) -> dict[str, Tensor]:
        x, labels, indices = batch
        z = self.encode(x)
        return {
            "z": z,
            "label": labels,
            "index": indices,
            "recon_error": losses.mean_squared_error(self.decode(z), x),
            "anomaly_score": self.anomaly_score(x),
        }

    @contextlib.contextmanager
    def evaluation_randomness(self, batch_idx: int) -> Iterator[None]:
        """Random draws of validation, test and predict from a generator seeded by the step, batch and rank, with the
        global generators restored afterwards: evaluation never shifts the training noise, and repeats exactly."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            rank = self.trainer.global_rank if self._trainer is not None else 0
            torch.manual_seed(hash((self.global_step, batch_idx, rank)) & 0x7FFF_FFFF_FFFF_FFFF)
            yield

    def _shared_step(self, batch: Batch, stage: Stage) -> dict[str, Tensor]:
        x, labels, indices = batch
        self._check_input_once(x)
        terms = self.loss_terms(x, labels, indices)
        self.log_terms(terms, stage, batch_size=len(x))
        return terms

    def log_terms(self, terms: dict[str, Tensor], stage: Stage, batch_size: int) -> None:
        """Log each term as ``<stage>/<name>`` (``loss`` also in the progress bar): training terms per step,
        validation and test terms averaged over the epoch and reduced across ranks."""
        training = stage == "train"
        for name, value in terms.items():
            self.log(
                f"{stage}/{name}",
                value,
                prog_bar=name == "loss",
                on_step=training,
                on_epoch=not training,
                sync_dist=not training,
                batch_size=batch_size,
            )

    def _check_input_once(self, x: Tensor) -> None:
        if not self._input_checked:
            self.check_input(x)
            self._input_checked = True

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

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["ae_lightning_class"] = _class_path(type(self))
        if self._trainer is not None:
            checkpoint["ae_lightning_optimizers"] = [_optimizer_settings(opt) for opt in self.trainer.optimizers]

    def check_resume(self, checkpoint: dict[str, Any]) -> None:
        """Raise a ValueError naming both values if this model's settings cannot continue the checkpoint's training
        (the command calls it before it creates anything; ``fit`` from Python when it loads the checkpoint)."""

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        stored = checkpoint.get("ae_lightning_class")
        if stored is not None and resolve_class_path(stored) is not type(self):
            raise ValueError(f"the checkpoint holds a {stored}, not a {_class_path(type(self))}")
        if self._trainer is not None and self.trainer.state.fn == "fit":
            self.check_resume(checkpoint)
        self._resumed_optimizers = checkpoint.get("ae_lightning_optimizers")

    def on_train_start(self) -> None:
        # Lightning has restored the optimizers' state: the run's own optimizer settings apply from here on.
        resumed, self._resumed_optimizers = getattr(self, "_resumed_optimizers", None), None
        if not resumed:
            return
        schedulers = self.trainer.lr_scheduler_configs
        for i, (optimizer, before) in enumerate(zip(self.trainer.optimizers, resumed)):
            check_optimizer_class(i, before["class"], optimizer)
            now = _optimizer_settings(optimizer)
            for name, value in now["defaults"].items():
                if before["defaults"].get(name, value) == value:
                    continue
                for group in optimizer.param_groups:
                    group[name] = value
                    if name == "lr" and "initial_lr" in group:
                        group["initial_lr"] = value
                for config in schedulers:
                    if (
                        name == "lr"
                        and config.scheduler.optimizer is optimizer
                        and hasattr(config.scheduler, "base_lrs")
                    ):
                        config.scheduler.base_lrs = [value] * len(optimizer.param_groups)
                previous = before["defaults"][name]
                rank_zero_info(f"optimizer {i}: {name} is {value} from here on (the checkpoint's run had {previous})")


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
        check_number("dropout", dropout, "[0, 1)")
        if reconstruction == "bce" and len(self.input_shape) == 1:
            raise ValueError(
                f"reconstruction: bce needs pixels in [0, 1], but input_shape {self.input_shape} is feature vectors; "
                "use reconstruction: mse"
            )
        self.reconstruction = reconstruction
        network, hidden_dims, spatial = self.hparams.network, self.hparams.hidden_dims, self.hparams.spatial
        self.encoder = build_encoder(network, self.input_shape, hidden_dims, self.latent_dim, dropout, spatial)
        self.decoder = build_decoder(network, self.latent_dim, hidden_dims, self.input_shape, dropout, spatial)

    def reconstruction_loss(self, logits: Tensor, x: Tensor) -> Tensor:
        """Per-image reconstruction loss of decoder ``logits`` against targets ``x``."""
        if self.reconstruction == "bce":
            return -losses.bernoulli_log_likelihood(logits, x)
        mean = networks.decoder_mean(logits, self.input_shape)
        return losses.squared_error(mean, x, event_ndim=len(self.input_shape))


def check_optimizer_class(index: int, stored: str, optimizer: torch.optim.Optimizer) -> None:
    """Raise a ValueError if ``optimizer`` is not of the class ``stored`` of a checkpoint's optimizer ``index``."""
    now = _class_path(type(optimizer))
    if now != stored:
        raise ValueError(
            f"the checkpoint's optimizer {index} is a {stored}, this run's a {now}: its state cannot carry over. "
            "Resume with the checkpoint's optimizer, or start afresh without --ckpt_path"
        )


def _optimizer_settings(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The class and the constructor settings (plain values only) of an optimizer, as stored in checkpoints."""
    plain = (bool, int, float, str, type(None))

    def is_plain(value: Any) -> bool:
        return isinstance(value, plain) or (isinstance(value, tuple) and all(isinstance(v, plain) for v in value))

    defaults = {name: value for name, value in optimizer.defaults.items() if is_plain(value)}
    return {"class": _class_path(type(optimizer)), "defaults": defaults}


def _factory_arguments(cls: type) -> list[str]:
    """The ``__init__`` arguments of ``cls`` and its bases that take optimizer or scheduler factories."""
    inits = [base.__init__ for base in cls.__mro__ if "__init__" in vars(base)]
    names = {name for init in inits for name in inspect.signature(init).parameters}
    return sorted(name for name in names if name.endswith(("optimizer", "lr_scheduler")))


def _class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def resolve_class_path(class_path: str) -> type | None:
    """The class named by ``class_path``; ``ae_lightning.<module>.<Name>`` of releases before the subpackages
    (``ae_lightning.vae.VAE``) resolves to ``ae_lightning.<Name>``; None when nothing by that name exists."""
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        if class_path.startswith("ae_lightning."):
            return getattr(importlib.import_module("ae_lightning"), name, None)
        return None


__all__ = ["AutoencoderModule", "DeterministicAutoencoder", "check_optimizer_class", "resolve_class_path"]

"""The base LightningModule: the shared step, logging, evaluation, prediction and optimizers of every variant."""

from __future__ import annotations

import abc
import contextlib
import importlib
import inspect
import numbers
import warnings
from collections.abc import Iterable, Iterator, Sequence, Sized
from typing import Any, ClassVar, Literal

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.types import LRSchedulerTypeUnion
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torchmetrics import Metric

from ae_lightning.blocks import losses, networks
from ae_lightning.blocks.networks import Network, check_network
from ae_lightning.blocks.spatial import SpatialOptions
from ae_lightning.evaluation.metrics import ReconstructionMetrics
from ae_lightning.lightning_internals import (
    batches_that_stepped,
    ends_training_epoch,
    stored_loader_states,
    uncounted_optimizer_step,
    weighted_batch_size,
)
from ae_lightning.training import fast
from datamodules.checks import Fraction, PositiveInt, check_init_arguments, plain_hyperparameters

Batch = tuple[Tensor, Tensor, Tensor]
Stage = Literal["train", "val", "test"]
Reconstruction = Literal["bce", "mse"]
# Where a checkpoint records its epoch's scheduler steps (``step_epoch_schedulers``, ``on_train_epoch_end``).
_SCHEDULERS_KEY = "ae_lightning_epoch_schedulers"
# The epoch whose last training batch a checkpoint was written at, before the validation that ends the epoch.
_UNVALIDATED_KEY = "ae_lightning_unvalidated_epoch"
# The networks given as modules from Python, which the checkpoint's hyperparameters cannot rebuild.
_GIVEN_KEY = "ae_lightning_given_networks"


class AutoencoderModule(L.LightningModule, abc.ABC):
    """Base of every variant: the shared step, logging, evaluation, prediction and optimizers.

    A variant implements :meth:`loss_terms` (named per-batch terms with ``loss``, logged as ``<stage>/<term>``) and may
    override :meth:`build_encoder`/:meth:`build_decoder`. Every variant offers ``encode(x, y) -> [B, *latent_shape]``
    and ``decode(z, y)`` in [0, 1], generative ones ``sample(n, y)``; only conditional models use ``y``. Ranges and
    choices are the signatures' types, checked here for every variant (``docs/internals.md``).

    Args:
        input_shape: ``(C, H, W)`` images or ``(D,)`` feature vectors; the CLI links it from the datamodule.
        latent_dim: size of the code; for ``network: spatial``, its channels.
        network: ``mlp``, ``conv`` or ``spatial`` (ResNet levels to codes ``[latent_dim, H / f, W / f]``).
        hidden_dims: MLP widths, or channels per convolution (per resolution level for ``spatial``: f = 2^(levels - 1)).
        spatial: ``num_res_blocks`` (default 2) and ``attention`` (default true) of ``network: spatial``.
        encoder: a ready encoder (``class_path`` in YAML) with the output of the variant's ``build_encoder``.
        decoder: a ready decoder: codes to logits ``[B, *input_shape]`` (the means, for feature vectors).
        optimizer: optimizer factory, called with the parameters (``class_path`` + ``init_args`` in YAML).
        lr_scheduler: optional scheduler factory, stepped every epoch (``ReduceLROnPlateau`` on a validating one's).
        compile_networks: ``torch.compile`` the networks in place when a stage starts (checkpoints load either way).
        steps_per_batch: optimizer steps per batch, as the datamodule's (fast path, docs/speed.md); 1: Lightning's own.
    """

    is_generative: ClassVar[bool] = False
    # Whether ``encode`` gives token indices rather than continuous codes (no interpolations or latent maps of them).
    discrete_codes: ClassVar[bool] = False
    # Whether some backward pass of a training step reaches only part of the weights (DDP must then look for unused
    # parameters, an extra walk over the autograd graph per backward).
    partial_backward: ClassVar[bool] = False
    # Weight-name prefixes of earlier releases' layouts and this release's, for checkpoints (:meth:`upgrade_weights`).
    renamed_weights: ClassVar[dict[str, str]] = {}
    # Why a variant needs flat codes ``[latent_dim]``, if it does: ``network: spatial`` is then refused with it.
    flat_codes_only: ClassVar[str | None] = None

    def __init__(
        self,
        input_shape: Sequence[PositiveInt] = (1, 28, 28),
        latent_dim: PositiveInt = 20,
        network: Network = "mlp",
        hidden_dims: Sequence[PositiveInt] = (256, 64),
        encoder: nn.Module | None = None,
        decoder: nn.Module | None = None,
        spatial: SpatialOptions | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        compile_networks: bool = False,
        steps_per_batch: PositiveInt = 1,
    ) -> None:
        super().__init__()
        # Optimizer and scheduler factories are not hyperparameters: a checkpoint must load without them.
        with warnings.catch_warnings():  # a module given from Python is dropped from the hyperparameters just below
            warnings.filterwarnings("ignore", r"Attribute '(en|de)coder' is an instance of `nn.Module`")
            self.save_hyperparameters(ignore=_factory_arguments(type(self)))
        for name in ("encoder", "decoder"):  # the command's (a class_path dict) stay: checkpoints rebuild it
            if isinstance(self.hparams.get(name), nn.Module):
                del self.hparams[name]
        check_init_arguments(type(self), self.hparams)
        plain_hyperparameters(self.hparams)
        self.save_hyperparameters(self.hparams)  # what loggers write (hparams.yaml) as the checkpoint holds it
        if network == "spatial" and self.flat_codes_only:
            raise ValueError(
                f"{type(self).__name__} cannot use network: spatial: {self.flat_codes_only}; use network: mlp or conv"
            )
        for name, given in (("encoder", encoder), ("decoder", decoder)):  # a function's weights would go untrained
            if given is not None and not isinstance(given, nn.Module):
                found = f"the class {given.__name__}" if isinstance(given, type) else f"a {type(given).__name__}"
                raise ValueError(
                    f"{type(self).__name__}'s {name} must be an nn.Module, whose weights the model trains and "
                    f"checkpoints, got {found}: pass a module instance, {name}=MyNetwork(...) (class_path is for YAML)"
                )
        if spatial is not None and network != "spatial":
            raise ValueError(f"the spatial settings {dict(spatial)} are for network: spatial, not {network!r}")
        check_network(network, input_shape, hidden_dims, latent_dim)
        self.input_shape = tuple(input_shape)
        self.latent_dim = latent_dim
        self.latent_shape = networks.latent_shape(network, input_shape, latent_dim, hidden_dims)
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.compile_networks = compile_networks
        fast.check_model(type(self), steps_per_batch)
        self.steps_per_batch = steps_per_batch
        self.automatic_optimization = steps_per_batch == 1
        self.test_reconstruction = ReconstructionMetrics(prefix="test/", images=len(self.input_shape) == 3)
        self._checked_stages: set[str] = set()  # those whose first batch :meth:`_check_batch` passed, in this run
        # Checkpointed (``on_train_epoch_end``): the last epoch whose schedulers stepped, the val/loss awaiting a step.
        self._scheduled_epoch = -1
        self._plateau_val_loss: float | None = None
        self._built_plateaus: list[ReduceLROnPlateau] = []  # by ``build_optimizer``, in this fit
        self._validated_epoch = -1  # the last epoch that fit validated in (this process)
        self._trained_epoch: int | None = None  # the epoch of the last training batch begun (this process)
        self._unstepped_batches = 0  # of the last Lightning batch, which max_steps cut (the fast path)
        self.encoder = encoder if encoder is not None else self.build_encoder()
        self.decoder = decoder if decoder is not None else self.build_decoder()
        self._given_networks = [name for name, net in (("encoder", encoder), ("decoder", decoder)) if net is not None]
        self._unchecked_networks = list(self._given_networks)

    def bfloat16(self) -> AutoencoderModule:
        # ``nn.Module.bfloat16`` bypasses Lightning's ``to``, which records the dtype that ``self.dtype`` reports.
        return self.to(torch.bfloat16)

    def build_encoder(self) -> nn.Module | None:
        """The encoder when none is given: inputs ``[B, *input_shape]`` to codes ``[B, *latent_shape]``."""
        hp = self.hparams
        return networks.build_encoder(
            hp.network, self.input_shape, hp.hidden_dims, self.latent_dim, hp.get("dropout", 0.0), hp.get("spatial")
        )

    def build_decoder(self) -> nn.Module:
        """The decoder when none is given: codes ``[B, *latent_shape]`` to logits ``[B, *input_shape]``."""
        hp = self.hparams
        return networks.build_decoder(
            hp.network, self.latent_dim, hp.hidden_dims, self.input_shape, hp.get("dropout", 0.0), hp.get("spatial")
        )

    def encode(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Codes ``[B, *latent_shape]`` of images ``x`` (with labels ``y``, which a conditional model needs)."""
        self.check_tensor(x, "encode(x)")
        return self.encoder(x)

    def decoder_logits(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """The decoder's output for codes ``z`` (and labels ``y``): logits for images, the means for vectors."""
        return self.decoder(z)

    def decode(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """Images ``[B, C, H, W]`` in [0, 1] (pixel means) decoded from codes ``z`` (and labels ``y``)."""
        self.check_tensor(z, "decode(z)", codes=True)
        return networks.decoder_mean(self.decoder_logits(z, y), self.input_shape)

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Reconstructions of ``x`` (with labels ``y``), in [0, 1]."""
        self.check_tensor(x, "forward(x)")
        return self.decode(self.encode(x, y), y)

    @torch.no_grad()
    def sample(self, n: int, y: Tensor | None = None) -> Tensor:
        """``n`` images decoded from :meth:`sample_prior` codes; a conditional variant's of the classes ``y``. Without
        an autograd graph, as torch's ``Distribution.sample``: ``decode(sample_prior(n))`` keeps one."""
        check_sample_count(n, y=y)
        return self.decode(self.sample_prior(n))

    def sample_prior(self, n: int) -> Tensor:
        """``n`` codes ``[n, *latent_shape]`` drawn from the prior, in the weights' dtype; generative variants only."""
        raise NotImplementedError(f"{type(self).__name__} is not a generative model: it has no prior to sample from")

    @abc.abstractmethod
    def loss_terms(self, x: Tensor, labels: Tensor, indices: Tensor) -> dict[str, Tensor]:
        """Named loss terms of one batch, averaged over it; ``loss`` is the one optimized."""

    def networks(self) -> list[nn.Module]:
        """The model's networks: its ``encoder``, ``decoder`` and ``discriminator``, those it has."""
        found = (getattr(self, name, None) for name in ("encoder", "decoder", "discriminator"))
        return [network for network in found if isinstance(network, nn.Module)]

    def reconstruction_rows(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, ...]:
        """The rows of the reconstruction picture of images ``x``: the images and their reconstructions."""
        return x, self(x, y)

    def anomaly_score(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Per-sample anomaly score (higher = more anomalous): the reconstruction's mean squared error."""
        return losses.mean_squared_error(self(x, y), x)

    def training_step(self, batch: Batch | list[Batch], batch_idx: int) -> dict[str, Tensor]:
        # All named terms, not only ``loss``: callbacks (the non-finite guard) see them as ``outputs``.
        if self.automatic_optimization:
            return self._shared_step(batch, "train")
        # On the fast path the batch is a list of batches: one optimizer step on each.
        stepped = fast.batches_to_step(batch, self.trainer)
        self._unstepped_batches = len(batch) - len(stepped) if fast.is_group(batch) else 0  # for checkpoints
        batches = [unpack_batch(one) for one in stepped]
        steps = []
        for k, one in enumerate(batches):
            self._check_batch(one[0], "train")
            steps.append(self.optimization_step(one))
            self.step_schedulers("step", batch_idx * self.steps_per_batch + k + 1)  # the epoch's steps so far
        self.log_terms(steps[-1], "train", batch_size=len(batches[-1][0]))
        self.step_epoch_schedulers()
        return steps[0] if len(steps) == 1 else fast.mean_terms(steps)

    def optimization_step(self, batch: Batch) -> dict[str, Tensor]:
        """One optimizer step on ``batch`` under manual optimization; returns the batch's loss terms, detached."""
        terms = self.loss_terms(*batch)
        self.manual_step(self.optimizers(), terms["loss"])
        return {name: value.detach() for name, value in terms.items()}

    def manual_step(self, optimizer: Optimizer, loss: Tensor, counted: bool = True) -> None:
        """Zero ``optimizer``'s gradients, backpropagate ``loss`` and step; only a ``counted`` step counts."""
        optimizer.zero_grad()
        self.manual_backward(loss)
        if counted:
            optimizer.step()
        else:
            uncounted_optimizer_step(self.trainer, optimizer)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        with self.evaluation_randomness(batch_idx):
            self._shared_step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        with self.evaluation_randomness(batch_idx):
            self._test_step(batch)

    def _test_step(self, batch: Batch) -> None:
        x, y, indices = unpack_batch(batch)
        self._check_batch(x, "test")
        terms, reconstruction = self.test_terms(x, y, indices)
        self.log_terms(terms, "test", batch_size=len(x))
        # test/recon_mse, recon_bce, psnr and ssim over the whole test set, in float32 at least (docs/internals.md)
        self.test_reconstruction.set_dtype(torch.promote_types(self.dtype, torch.float32))
        self.test_reconstruction.update(reconstruction.float(), x)
        self.log_dict(self.test_reconstruction, batch_size=len(x))
        for name, value in self.test_metrics(x, y, reconstruction).items():
            self.log(f"test/{name}", value, batch_size=weighted_batch_size(len(x)), sync_dist=True)

    def test_terms(self, x: Tensor, labels: Tensor, indices: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """A test batch's :meth:`loss_terms` and the reconstructions its metrics score, ``self(x, labels)``."""
        return self.loss_terms(x, labels, indices), self(x, labels)

    def test_metrics(
        self, x: Tensor, y: Tensor | None = None, reconstruction: Tensor | None = None
    ) -> dict[str, Tensor]:
        """A variant's extra per-batch test metrics, averaged over the test set; ``reconstruction``: ``self(x, y)``."""
        return {}

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        batch = unpack_batch(batch)
        self._check_batch(batch[0], "predict")
        with self.evaluation_randomness(batch_idx):
            return self._predict_step(batch)

    def _predict_step(self, batch: Batch) -> dict[str, Tensor]:
        x, labels, indices = batch
        z = self.encode(x, labels)
        error = losses.mean_squared_error(self.decode(z, labels), x)
        score = self._anomaly_score(x, labels, error)
        return {"z": z, "label": labels, "index": indices, "recon_error": error, "anomaly_score": score}

    def _anomaly_score(self, x: Tensor, labels: Tensor, error: Tensor) -> Tensor:
        # ``error``, the reconstruction's, is the score where a variant keeps the default.
        return error if type(self).anomaly_score is AutoencoderModule.anomaly_score else self.anomaly_score(x, labels)

    @contextlib.contextmanager
    def evaluation_randomness(self, batch_idx: int) -> Iterator[None]:
        """Evaluation's random draws seeded by the step, batch and rank, the global generators restored afterwards."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(hash((self.global_step, batch_idx, self.global_rank)) & 0x7FFF_FFFF_FFFF_FFFF)
            yield

    def _shared_step(self, batch: Batch, stage: Stage) -> dict[str, Tensor]:
        x, labels, indices = unpack_batch(batch)
        self._check_batch(x, stage)
        terms = self.loss_terms(x, labels, indices)
        self.log_terms(terms, stage, batch_size=len(x))
        return terms

    def log_terms(self, terms: dict[str, Tensor], stage: Stage, batch_size: int) -> None:
        """Log each term as ``<stage>/<name>``: evaluation's as epoch means, training's per step (docs/internals.md)."""
        if stage == "train":
            self.log("train/loss", terms["loss"], prog_bar=True, on_step=True, on_epoch=False, batch_size=batch_size)
            self._unlogged_terms = terms, batch_size
            return
        for name, value in terms.items():
            self.log(f"{stage}/{name}", value, prog_bar=name == "loss", sync_dist=True,
                     batch_size=weighted_batch_size(batch_size), on_step=False, on_epoch=True)  # fmt: skip

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._trained_epoch = self.current_epoch  # which, once training has ended, is the next epoch's number

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # The other terms only where Lightning writes the step's logs, after the callbacks' hooks (docs/internals.md).
        unlogged, self._unlogged_terms = getattr(self, "_unlogged_terms", None), None
        trainer, every = self.trainer, self.trainer.log_every_n_steps
        stepped = batches_that_stepped(trainer) + 1
        written = trainer.fast_dev_run or (every != 0 and (stepped % every == 0 or trainer.should_stop))
        written = written or ends_training_epoch(trainer)  # for what reads them at the epoch's end (EarlyStopping)
        if unlogged is None or not written:
            return
        terms, batch_size = unlogged
        for name, value in terms.items():
            if name != "loss":
                self.log(f"train/{name}", value, on_step=True, on_epoch=False, batch_size=batch_size)

    def _check_batch(self, x: Tensor, stage: str) -> None:
        """At each stage's first batch, :meth:`check_input`, the dtype and the values (pixels in [0, 1], finite)."""
        if stage in self._checked_stages:
            return
        self.check_input(x)
        name, kind = type(self).__name__, "images" if len(self.input_shape) == 3 else "feature vectors"
        if x.dtype != self.dtype:
            raise ValueError(self._dtype_mismatch(x, f"the {stage} batch", kind))
        finite = bool(x.isfinite().all())
        if not finite or (kind == "images" and not x.ge(0).logical_and(x.le(1)).all()):
            found = "NaN or infinite values" if not finite else f"values in [{x.min():.4g}, {x.max():.4g}]"
            expected = "pixels in [0, 1] (8-bit values divided by 255)" if kind == "images" else "finite values"
            raise ValueError(f"{name} takes {kind} of {expected}, but the {stage} batch holds {found}")
        self._checked_stages.add(stage)

    def check_input(self, x: Tensor) -> None:
        """Raise a ValueError naming the mismatch if ``x`` is not a batch of ``input_shape`` images or vectors."""
        if tuple(x.shape[1:]) != self.input_shape:
            kind = "images" if len(self.input_shape) == 3 else "feature vectors"
            raise ValueError(
                f"{type(self).__name__} expects {kind} of shape {self.input_shape}, got a batch of shape "
                f"{tuple(x.shape)}; set model input_shape to match the data"
            )

    def check_tensor(self, t: Any, call: str, codes: bool = False) -> None:
        """A ValueError unless ``t``, the argument of ``call`` (``"encode(x)"``), is a batch ``[B, *input_shape]``
        (``codes``: ``[B, *latent_shape]``, any height and width for spatial codes) of the weights' dtype."""
        shape = self.latent_shape if codes else self.input_shape
        if isinstance(t, Tensor) and t.dtype == self.dtype and t.shape[1:] == shape:
            return
        name, kind = type(self).__name__, "codes" if codes else "images" if len(shape) == 3 else "feature vectors"
        any_size = len(self.latent_shape) == 3  # the encoder and decoder check the sizes they can take
        expected = (
            f"[B, {shape[0]}, {'h, w' if codes else 'H, W'}]" if any_size else f"[B, {', '.join(map(str, shape))}]"
        )
        if not isinstance(t, Tensor):
            raise ValueError(f"{name}.{call} takes a tensor of {kind} {expected}, got a {type(t).__name__}")
        if t.shape[1:] != shape and not (any_size and t.dim() == 4 and t.shape[1] == shape[0]):
            fix = f": add the batch dimension, {'z' if codes else 'x'}[None]" if t.dim() == len(shape) else ""
            raise ValueError(f"{name}.{call} takes {kind} {expected}, got a tensor of shape {list(t.shape)}{fix}")
        if t.dtype != self.dtype and not (t.is_floating_point() and torch.is_autocast_enabled(t.device.type)):
            raise ValueError(self._dtype_mismatch(t, call, kind))

    def _dtype_mismatch(self, t: Tensor, where: str, kind: str) -> str:
        name = "z" if kind == "codes" else "x"
        fix = f"pass {name}.float() / 255" if t.dtype == torch.uint8 and kind == "images" else ""
        fix = fix or f"convert them with {name}.to({self.dtype})"
        return f"{type(self).__name__} has {self.dtype} weights, but {where} holds {t.dtype} {kind}: {fix}"

    def check_given_networks(self) -> None:
        """Once, a ValueError unless a given network takes two zero inputs through ``encode`` and ``decode``."""
        given, self._unchecked_networks = " and ".join(self._unchecked_networks), []
        if not given:
            return
        x = torch.zeros(2, *self.input_shape, device=self.device, dtype=self.dtype)
        y = torch.zeros(2, dtype=torch.long, device=self.device)
        name, training, shape = type(self).__name__, self.training, ", ".join(map(str, self.input_shape))
        # Left as it was (e.g. a codebook's k-means init); lazy modules' parameters take their shapes, as they would.
        state = {
            k: v.clone() for k, v in self.state_dict().items() if not isinstance(v, nn.parameter.UninitializedParameter)
        }
        self.eval()
        try:
            with torch.no_grad():
                self.check_encoder_output(x, y)
                z = self.encode(x, y)
                if not isinstance(z, Tensor):
                    raise ValueError(f"encode returns a {type(z).__name__}, not a tensor of codes")
                out = self.decode(z, y)  # which refuses codes of another shape than latent_shape's
                if not isinstance(out, Tensor):
                    raise ValueError(f"decode returns a {type(out).__name__}, not a tensor of images")
                if tuple(out.shape[1:]) != self.input_shape:
                    raise ValueError(f"the reconstructions have shape {list(out.shape)}, {name} needs [2, {shape}]")
        except (RuntimeError, ValueError, IndexError, TypeError, AttributeError) as error:
            raise ValueError(
                f"the given {given} of {name} do not fit: two inputs [2, {shape}] through encode and decode: {error}"
            ) from error
        finally:
            self.load_state_dict(state, strict=False)
            self.train(training)

    def check_encoder_output(self, x: Tensor, y: Tensor) -> None:
        """Raise a ValueError if the encoder's output lacks what the model reads beyond ``encode``'s codes."""

    def configure_optimizers(self) -> Any:
        """One optimizer over the trainable weights, and a second over a ``discriminator``'s, if there is one."""
        discriminator = getattr(self, "discriminator", None)
        theirs = {id(p) for p in discriminator.parameters()} if discriminator is not None else set()
        trainable = [p for p in self.parameters() if p.requires_grad and id(p) not in theirs]
        built = self.build_optimizer(trainable, self.optimizer_factory, self.lr_scheduler_factory)
        if discriminator is None:
            return built
        factories = self.discriminator_optimizer_factory, self.discriminator_lr_scheduler_factory
        return [built, self.build_optimizer(discriminator.parameters(), *factories)]

    def build_optimizer(
        self,
        parameters: Iterable[nn.Parameter] | Iterable[dict[str, Any]],
        optimizer: OptimizerCallable,
        lr_scheduler: LRSchedulerCallable | None,
    ) -> dict[str, Any]:
        """One optimizer (and scheduler) configuration; the optimizer fused where it can be (docs/speed.md)."""
        # Each build gets copies of the groups, which torch fills in, and lists, not iterators, of their parameters.
        parameters = [_materialized_group(p) if isinstance(p, dict) else p for p in parameters]

        def build(**kwargs: Any) -> torch.optim.Optimizer:
            return optimizer([dict(p) if isinstance(p, dict) else p for p in parameters], **kwargs)

        built = build()
        choose = "fused" in built.defaults and built.defaults["fused"] is None and built.defaults.get("foreach") is None
        trainer = self._attached_trainer()
        if choose and not (trainer is not None and trainer.precision in ("16-mixed", "bf16-mixed")):
            with contextlib.suppress(RuntimeError, TypeError, ValueError):  # no fused kernel for this device or dtype
                built = build(fused=True)
        if lr_scheduler is None:
            return {"optimizer": built}
        scheduler = {"scheduler": lr_scheduler(built)}
        if isinstance(scheduler["scheduler"], ReduceLROnPlateau):
            every = self.plateau_validation_epochs()
            self._built_plateaus.append(scheduler["scheduler"])  # stepped by ``on_train_epoch_end``
            if self.automatic_optimization:  # for Lightning's checks: its steps are skipped (``lr_scheduler_step``)
                scheduler.update(monitor="val/loss", frequency=every)
        return {"optimizer": built, "lr_scheduler": scheduler}

    def plateau_validation_epochs(self, trainer: L.Trainer | None = None, val_data: bool | None = None) -> int:
        """Every how many epochs ``trainer`` (default: the model's; 1 without one) validates, for a ReduceLROnPlateau;
        a ValueError where none runs, or runs by steps. ``val_data``: whether there is a val_dataloader."""
        trainer = self._attached_trainer() if trainer is None else trainer
        if trainer is None:
            return 1
        validates = trainer.enable_validation if val_data is None else val_data and trainer.limit_val_batches > 0
        plateau = "lr_scheduler ReduceLROnPlateau steps on val/loss after each validation"
        if not validates:
            cause = "there is no validation data (no val_dataloader)"
            if not trainer.limit_val_batches:
                cause = f"--trainer.limit_val_batches {trainer.limit_val_batches} runs none"
            raise ValueError(f"{plateau}, but {cause}: validate, or choose a scheduler that needs no metric (StepLR, "
                             "CosineAnnealingLR, ...)")  # fmt: skip
        if trainer.check_val_every_n_epoch is None and self.automatic_optimization:
            raise ValueError(f"{plateau} at an epoch's end, but --trainer.check_val_every_n_epoch null validates every "
                             f"val_check_interval ({trainer.val_check_interval}) batches instead: set "
                             "check_val_every_n_epoch")  # fmt: skip
        return trainer.check_val_every_n_epoch or 1

    def _attached_trainer(self) -> L.Trainer | None:
        """The model's trainer, or None when it is not attached to one."""
        try:
            return self.trainer
        except RuntimeError:
            return None

    def fit_steps(self) -> float:
        """The optimizer steps (``global_step``) the attached trainer's fit takes: its estimate in batches times
        ``steps_per_batch``, at most ``max_steps``; ``inf`` for a fit without end. Known from ``on_train_start``."""
        trainer = self.trainer
        steps = trainer.estimated_stepping_batches * self.steps_per_batch
        return min(steps, trainer.max_steps) if trainer.max_steps > 0 else steps

    def on_fit_start(self) -> None:
        fast.check_fit(self.trainer, self.steps_per_batch)

    def on_train_epoch_start(self) -> None:
        if self.steps_per_batch > 1:
            fast.check_epoch(self.trainer, self.steps_per_batch)

    def step_epoch_schedulers(self) -> None:
        """Under manual optimization, step the epoch-interval schedulers once at the epoch's last batch."""
        if self.automatic_optimization or self._scheduled_epoch == self.current_epoch:
            return
        if not ends_training_epoch(self.trainer):
            return
        self._scheduled_epoch = self.current_epoch
        self.step_schedulers("epoch", self.current_epoch + 1)

    def step_schedulers(self, interval: Literal["step", "epoch"], count: int) -> None:
        """Under manual optimization, step the non-plateau schedulers of ``interval`` due at ``count``."""
        for config in self.trainer.lr_scheduler_configs if not self.automatic_optimization else []:
            plateau = isinstance(config.scheduler, ReduceLROnPlateau)  # stepped by ``on_train_epoch_end``
            if config.interval == interval and count % config.frequency == 0 and not plateau:
                config.scheduler.step()

    def _fit_validation_loss(self, current: float | None) -> float | None:
        """The val/loss of a validation of fit that has ended, else ``current``."""
        trainer = self.trainer
        if trainer.state.fn != "fit" or trainer.sanity_checking:
            return current
        loss = trainer.callback_metrics.get("val/loss")
        return None if loss is None else float(loss)

    def lr_scheduler_step(self, scheduler: LRSchedulerTypeUnion, metric: Any | None) -> None:
        # The ReduceLROnPlateau that ``build_optimizer`` built step in on_train_epoch_end (docs/fault_tolerance.md).
        if scheduler not in self._built_plateaus:
            super().lr_scheduler_step(scheduler, metric)

    def on_validation_end(self) -> None:
        # The ReduceLROnPlateaus step on the latest val/loss of fit at the epoch's end.
        self._plateau_val_loss = self._fit_validation_loss(self._plateau_val_loss)
        if self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            self._validated_epoch = self.current_epoch

    def on_train_epoch_end(self) -> None:
        # At the end of an epoch that ran to its last batch: the epoch's schedulers and the plateau ones that Lightning
        # leaves (under manual optimization all), on fit's latest val/loss.
        if not ends_training_epoch(self.trainer):
            return
        self.step_epoch_schedulers()
        # A checkpoint written between the validation and this step keeps the val/loss for the resumed run's step.
        loss, self._plateau_val_loss = self._plateau_val_loss, None
        schedulers = (self.lr_schedulers() or []) if loss is not None else []
        for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
            ours = scheduler in self._built_plateaus or not self.automatic_optimization  # Lightning steps the others
            if ours and isinstance(scheduler, ReduceLROnPlateau):
                scheduler.step(loss)

    def configure_model(self) -> None:
        if self.compile_networks:
            for network in self.networks():
                network.compile()  # in place: ``torch.compile(network)`` would rename every weight ``_orig_mod.*``

    def setup(self, stage: str) -> None:
        self._checked_stages = set()
        # Each stage's metrics start empty, in states of this process's own: ddp_spawn's processes on the CPU get the
        # model's tensors in shared memory, and Lightning unshares its parameters and buffers, not metric states.
        for metric in self.modules():
            if isinstance(metric, Metric):
                metric.reset()
        if stage == "fit":  # a fit starts at epoch 0, unless it restores a checkpoint (after this hook)
            self._scheduled_epoch, self._plateau_val_loss, self._built_plateaus = -1, None, []
        self.check_given_networks()
        datamodule = getattr(self.trainer, "datamodule", None)
        data_shape = getattr(datamodule, "input_shape", None)
        if data_shape is not None and tuple(data_shape) != self.input_shape:
            kind = "images" if len(self.input_shape) == 3 else "feature vectors"
            raise ValueError(
                f"{type(self).__name__} was built for {kind} of shape {self.input_shape}, but "
                f"{type(datamodule).__name__} yields {tuple(data_shape)}"
            )

    def set_gradient_clipping(self, value: float | None, algorithm: str) -> None:
        """Keep a variant's own clipping, applied under manual optimization; a ValueError for an ``algorithm`` other
        than ``"norm"`` that no ``value`` reads."""
        if algorithm != "norm" and not value:
            trainer = "--trainer.gradient_clip_val and --trainer.gradient_clip_algorithm (the Trainer clips)"
            raise ValueError(
                f"gradient_clip_algorithm={algorithm!r} has no effect without gradient_clip_val (nothing reads it): "
                f"set {trainer if self.automatic_optimization else 'gradient_clip_val'}, or leave "
                "gradient_clip_algorithm at its default 'norm'"
            )
        self.gradient_clip_val, self.gradient_clip_algorithm = value, algorithm

    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        # The Trainer does not clip under manual optimization: a variant's own ``gradient_clip_val`` is applied here.
        clip = getattr(self, "gradient_clip_val", None)
        if clip and not self.automatic_optimization and self.clips(optimizer):
            self.clip_gradients(optimizer, clip, self.gradient_clip_algorithm)

    def clips(self, optimizer: Optimizer) -> bool:
        """Whether the manual gradient clipping applies to ``optimizer``'s steps."""
        return True

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["ae_lightning_class"] = class_path(type(self))
        checkpoint[_GIVEN_KEY] = [name for name in self._given_networks if name not in self.hparams]
        checkpoint[fast.UNSTEPPED_KEY] = self._unstepped_batches
        # Written in a validation's end hooks before this model's, the checkpoint keeps that val/loss for the step.
        val_loss, trainer = self._plateau_val_loss, self._attached_trainer()
        validating = trainer is not None and trainer.validating
        if validating:
            val_loss = self._fit_validation_loss(val_loss)
        checkpoint[_SCHEDULERS_KEY] = {"stepped_epoch": self._scheduled_epoch, "val_loss": val_loss}
        if trainer is None or validating:
            return
        # Fit at the end of an epoch's last training batch, before the validation that ends the epoch?
        every, epoch = trainer.check_val_every_n_epoch, self._trained_epoch
        due = trainer.state.fn == "fit" and not trainer.sanity_checking and epoch is not None and every is not None
        due = due and trainer.enable_validation and (epoch + 1) % every == 0 and trainer.val_check_interval == 1.0
        if due and self._validated_epoch != epoch and ends_training_epoch(trainer):
            checkpoint[_UNVALIDATED_KEY] = epoch

    def check_resume(self, checkpoint: dict[str, Any]) -> None:
        """Raise a ValueError if this model's settings cannot continue the checkpoint's training."""
        fast.check_resume(checkpoint, self.steps_per_batch)

    def check_data(self, datamodule: L.LightningDataModule, stage: str, checkpoint: dict[str, Any] | None) -> None:
        """Raise a ValueError if the model cannot take ``datamodule``'s data in ``stage`` (or the checkpoint's)."""

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> AutoencoderModule:
        """Lightning's ``load_from_checkpoint``; a checkpoint of another variant, or settings (``kwargs``) its weights
        cannot take, are a ValueError naming them."""
        try:
            return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)
        # ``__init__`` refused the other variant's hyperparameters (or cls is abstract), or Lightning refused the
        # command's ``_class_path`` of a class that is no subclass of cls
        except (TypeError, ValueError) as error:
            stored = _stored(checkpoint_path).get("ae_lightning_class")
            if stored is None or resolve_class_path(stored) is cls:
                raise
            raise ValueError(_other_variant(stored, cls)) from error
        except RuntimeError as error:  # torch's size mismatches name tensors, not the settings that made them
            trained = _stored(checkpoint_path).get("hyper_parameters", {})
            changed = [f"{name}={value!r} (the checkpoint's: {trained[name]!r})" for name, value in kwargs.items()
                       if name in trained and not same_setting(value, trained[name])]  # fmt: skip
            if "size mismatch" not in str(error) or not changed:
                raise
            raise ValueError(
                f"the checkpoint's weights do not fit {', '.join(changed)}: load it without them"
            ) from None

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        stored = checkpoint.get("ae_lightning_class")
        if stored is not None and resolve_class_path(stored) is not type(self):
            raise ValueError(_other_variant(stored, type(self)))
        missing = [name for name in checkpoint.get(_GIVEN_KEY, []) if name not in self._given_networks]
        if missing:  # before Lightning loads the weights into the networks built instead
            raise ValueError(
                f"the checkpoint's {type(self).__name__} was built with a given {' and '.join(missing)}, which "
                f"checkpoints do not hold: pass {'it' if len(missing) == 1 else 'them'}, "
                f"{type(self).__name__}.load_from_checkpoint(path, {', '.join(f'{name}=...' for name in missing)})"
            )
        checkpoint["state_dict"] = self.upgrade_weights(checkpoint["state_dict"])
        schedulers = checkpoint.get(_SCHEDULERS_KEY, {})
        self._scheduled_epoch = schedulers.get("stepped_epoch", -1)
        self._plateau_val_loss = schedulers.get("val_loss")
        trainer = self._attached_trainer()
        fitting = trainer is not None and trainer.state.fn == "fit"
        # Lightning loads the weights before it makes the model float64: not via float32.
        if trainer is not None and trainer.precision == "64-true":
            self.double()
        if fitting:
            self.check_resume(checkpoint)
            # The command checks the data before any file; from Python, here (Lightning restores no loader at an
            # epoch's end, and so checks nothing there).
            datamodule, loader_states = trainer.datamodule, stored_loader_states(checkpoint)
            if datamodule is not None:
                self.check_data(datamodule, "fit", checkpoint)
            if loader_states and hasattr(datamodule, "check_resume"):
                datamodule.check_resume(loader_states[0], world_size=trainer.world_size)
        if fitting and checkpoint.get(_UNVALIDATED_KEY) is not None:
            rank_zero_warn(
                f"the checkpoint was written at the end of epoch {checkpoint[_UNVALIDATED_KEY]}'s last training batch, "
                "before that epoch's validation, which Lightning skips on resume: what val/loss drives (a "
                "ReduceLROnPlateau, EarlyStopping, the best checkpoint) misses it. For an exact resume, resume from a "
                "checkpoint written after the validation (last.ckpt, or every_n_train_steps that does not divide the "
                "epoch; docs/fault_tolerance.md)"
            )

    def upgrade_weights(self, weights: dict[str, Tensor]) -> dict[str, Tensor]:
        """A checkpoint's weights, old names (:attr:`renamed_weights`) renamed unless this model has them."""
        own = self.state_dict().keys()
        renamed = {}
        for name, value in weights.items():
            old = next((old for old in self.renamed_weights if name.startswith(old) and name not in own), None)
            new = None if old is None else self.renamed_weights[old] + name[len(old) :]
            renamed[new if new in own else name] = value
        return renamed


class DeterministicAutoencoder(AutoencoderModule):
    """Base of the autoencoders with a deterministic code: an encoder to ``latent_dim`` and a decoder back.

    Args:
        reconstruction: ``bce`` (binary cross-entropy with the pixels) or ``mse``, summed per image.
        dropout: dropout after each hidden layer of the built networks, in training; 0 with a given network.
    """

    def __init__(self, reconstruction: Reconstruction = "bce", dropout: Fraction = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        given = self._given_networks
        if dropout and given:
            raise ValueError(
                f"dropout={dropout} adds dropout after the hidden layers of the networks {type(self).__name__} builds, "
                f"but the given {' and '.join(given)} {'is' if len(given) == 1 else 'are'} used unchanged: put dropout "
                "layers in it and set dropout: 0"
            )
        if reconstruction == "bce" and len(self.input_shape) == 1:
            raise ValueError(
                f"reconstruction: bce needs pixels in [0, 1], but input_shape {self.input_shape} is feature vectors; "
                "use reconstruction: mse"
            )
        self.reconstruction = reconstruction

    def reconstruction_loss(self, logits: Tensor, x: Tensor) -> Tensor:
        """Per-image reconstruction loss of decoder ``logits`` against targets ``x``."""
        if self.reconstruction == "bce":
            return -losses.bernoulli_log_likelihood(logits, x)
        mean = networks.decoder_mean(logits, self.input_shape)
        return losses.squared_error(mean, x, event_ndim=len(self.input_shape))

    def mean_reconstruction_loss(self, logits: Tensor, x: Tensor) -> Tensor:
        """:meth:`reconstruction_loss` averaged over the batch ``[B, *input_shape]``, as one fused reduction."""
        if logits.shape != x.shape:
            return self.reconstruction_loss(logits, x).mean()
        if self.reconstruction == "bce":
            return losses.bernoulli_nll_batch_mean(logits, x)
        return losses.squared_error_batch_mean(networks.decoder_mean(logits, self.input_shape), x)


def check_sample_count(n: object, method: str = "sample", y: object = None) -> None:
    """Raise a ValueError unless ``n`` is an integer >= 0 and ``y`` None (labels are a conditional model's)."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
        raise ValueError(f"{method}(n={n!r}): n, the number of images, must be an integer >= 0")
    if y is not None:
        raise ValueError(f"{method}(n={n}, y=...): labels choose the classes of a conditional model's samples (a "
                         "ConditionalVAE's); this model is not conditional: leave y out")  # fmt: skip


def unpack_batch(batch: Any) -> Batch:
    """``(images, labels, indices)`` of a batch, as the datamodules yield it; a ValueError naming any other layout."""
    if isinstance(batch, (tuple, list)) and len(batch) == 3:
        return tuple(batch)
    layout = f" of shape {list(batch.shape)}" if isinstance(batch, Tensor) else ""
    layout = layout or (f" of {len(batch)} items" if isinstance(batch, Sized) else "")
    raise ValueError(
        f"ae-lightning models take batches (images, labels, indices), as its datamodules yield; got a "
        f"{type(batch).__name__}{layout}: add labels (-1 for none) and each sample's index to your dataset, or use "
        "ArrayDataModule"
    )


def _materialized_group(group: dict[str, Any]) -> dict[str, Any]:
    """A copy of a parameter group, its ``params`` a list if they came as an iterator (``module.parameters()``)."""
    params = group["params"]
    return {**group, "params": list(params)} if isinstance(params, Iterator) else dict(group)


def _factory_arguments(cls: type) -> list[str]:
    """The ``__init__`` arguments of ``cls`` and its bases that take optimizer or scheduler factories."""
    inits = [base.__init__ for base in cls.__mro__ if "__init__" in vars(base)]
    names = {name for init in inits for name in inspect.signature(init).parameters}
    return sorted(name for name in names if name.endswith(("optimizer", "lr_scheduler")))


def _stored(checkpoint: Any) -> dict[str, Any]:
    """The contents of a checkpoint (a path or a seekable file), or {} where they cannot be read safely."""
    with contextlib.suppress(Exception):
        if hasattr(checkpoint, "seek"):
            checkpoint.seek(0)
        return torch.load(checkpoint, map_location="cpu", weights_only=True)
    return {}


def same_setting(a: Any, b: Any) -> bool:
    """Whether two hyperparameters are equal, a tuple and a list of the same items alike (YAML has no tuples)."""
    return (list(a) if isinstance(a, tuple) else a) == (list(b) if isinstance(b, tuple) else b)


def _other_variant(stored: str, cls: type) -> str:
    return (
        f"the checkpoint holds a {stored}, not a {class_path(cls)}: load it with "
        f"{stored.rpartition('.')[2]}.load_from_checkpoint"
    )


def class_path(cls: type) -> str:
    """``cls``'s import path, ``module.QualifiedName``, as configs and checkpoints name classes."""
    return f"{cls.__module__}.{cls.__qualname__}"


def resolve_class_path(class_path: str) -> type | None:
    """The class named by ``class_path`` (an old ``ae_lightning.<module>.<Name>``: ``ae_lightning.<Name>``), or None."""
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        if class_path.startswith("ae_lightning."):
            return getattr(importlib.import_module("ae_lightning"), name, None)
        return None


__all__ = [
    "AutoencoderModule",
    "DeterministicAutoencoder",
    "check_sample_count",
    "class_path",
    "resolve_class_path",
    "same_setting",
    "unpack_batch",
]

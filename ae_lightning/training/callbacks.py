"""Callbacks of the ``ae-lightning`` command: pictures of the model, the config saved into W&B runs, the logger's run
recorded in checkpoints, and a progress bar that ends its line when a run fails."""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.fabric.utilities.rank_zero import WarningCache
from lightning.pytorch.callbacks import Callback, TQDMProgressBar, WeightAveraging
from lightning.pytorch.callbacks import EMAWeightAveraging as LightningEMA
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from ae_lightning.base import AutoencoderModule, class_path
from ae_lightning.checks import ConfigError
from ae_lightning.evaluation import visualization
from ae_lightning.evaluation.visualization import View
from ae_lightning.lightning_internals import batches_that_stepped
from datamodules.checks import AtLeastTwo, NonNegativeInt, PositiveInt, check_arguments


class ImageLogger(Callback):
    """Logs pictures of the model after every ``every_n_epochs``-th validation of ``fit`` and after the run's last, as
    ``<name>/<view>`` or to ``<log_dir>/<name>/<view>-epoch=E-step=S.png``; not in sanity checks or ``fast_dev_run``,
    under DDP on rank 0 only. Beside a ``WeightAveraging`` callback it draws the average, and must come after it.

    Args:
        every_n_epochs: draw after every n-th validation epoch (not training epoch); 0 disables the callback.
        views: the pictures to draw; None: every view that applies.
        num_images, num_samples: validation images in the reconstruction grid; prior samples in the sample grid.
        num_interpolations, interpolation_steps: pairs of validation images interpolated; points decoded per pair.
        latent_map_size: validation images whose codes are plotted, kept in CPU memory.
        nrow, seed: images per row of the reconstruction and sample grids; seed of the prior samples.
        name: the pictures' tag prefix and PNG folder; each enabled ImageLogger of a trainer needs its own.
    """

    def __init__(
        self,
        every_n_epochs: NonNegativeInt = 1,
        views: Sequence[View] | None = None,
        num_images: PositiveInt = 16,
        num_samples: PositiveInt = 64,
        num_interpolations: PositiveInt = 6,
        interpolation_steps: AtLeastTwo = 8,
        latent_map_size: AtLeastTwo = 2000,
        nrow: PositiveInt = 8,
        seed: int = 0,
        name: str = "images",
    ) -> None:
        check_arguments(locals(), ImageLogger.__init__)
        if not re.fullmatch(r"\w[\w.-]*", name):
            raise ValueError(f"name must be a folder name of letters, digits, '_', '-' and '.', got {name!r}")
        self.every_n_epochs = every_n_epochs
        self.views = list(views) if views is not None else None
        self.num_images = num_images
        self.num_samples = num_samples
        self.num_interpolations = num_interpolations
        self.interpolation_steps = interpolation_steps
        self.latent_map_size = latent_map_size
        self.nrow = nrow
        self.seed = seed
        self.name = name
        self.active_views: list[str] = []
        self.image_dir: Path | None = None
        self.class_names: list[str] | None = None
        self._batches: dict[int, tuple[Tensor, Tensor]] = {}
        self._kept = self._needed = 0  # validation images kept, and to keep (set in setup)
        self._told = WarningCache()  # messages given once
        self._validations = 0  # validation epochs of fit so far, sanity checks aside
        self._ended = False  # whether the running validation's last batch has been handled
        self._undrawn: tuple[int, int, int] | None = None  # (step, epoch, logger step) of an undrawn last validation

    @property
    def state_key(self) -> str:
        # one per settings and name; the default name left out keeps the key of checkpoints from before names existed
        settings = ("every_n_epochs", "views", "num_images", "num_samples", "num_interpolations", "latent_map_size")
        settings += ("name",) if self.name != "images" else ()
        return f"{type(self).__qualname__}{{{', '.join(f'{name}={getattr(self, name)!r}' for name in settings)}}}"

    def state_dict(self) -> dict[str, Any]:
        return {"validations": self._validations}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._validations = state_dict["validations"]

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # A resume with other settings (a key of its own) goes on with the count of the enabled one of its name.
        states = checkpoint.get("callbacks") or {}
        if not self.every_n_epochs or self.state_key in states:
            return
        for key, state in states.items():
            found = re.fullmatch(
                rf"{type(self).__qualname__}{{every_n_epochs=[1-9]\d*, .*?(?:, name='(.*)')?}}", str(key)
            )
            if found and (found[1] or "images") == self.name:
                self.load_state_dict(state)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or self.every_n_epochs == 0:
            return
        check_image_loggers(trainer.callbacks)
        if self.views is None:
            self.active_views = visualization.applicable_views(pl_module)
            if len(pl_module.input_shape) == 1:
                rank_zero_info(
                    f"ImageLogger: the data are feature vectors of shape {pl_module.input_shape}, so it draws only the "
                    "latent map (reconstructions, samples and interpolations are pictures of images)"
                )
        else:
            self.active_views = visualization.check_views(pl_module, self.views)
        needs = {"reconstructions": self.num_images, "interpolations": 2 * self.num_interpolations}
        needs["latent_map"] = self.latent_map_size
        # at least one batch, even for samples alone: it tells the device and the labels
        self._needed = max([1, *(needs.get(view, 0) for view in self.active_views)]) if self.active_views else 0
        # run_directory is a collective call under DDP, so every rank asks for it here, not only rank 0 later.
        log_dir = run_directory(trainer)
        self.image_dir = None if any(_image_sink(logger) for logger in trainer.loggers) else log_dir / self.name
        self.class_names = getattr(getattr(trainer, "datamodule", None), "class_names", None)

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if dataloader_idx:
            return
        if self._kept < self._needed and batch_idx not in self._batches and trainer.is_global_zero:
            images, labels = batch[0], batch[1]
            if labels.shape != images.shape[:1] or labels.is_floating_point():  # no labels (Mult-VAE: held-out clicks)
                labels = torch.full((len(images),), -1)  # drawn unlabeled
            self._batches[batch_idx] = images.detach().cpu(), labels.detach().cpu()
            self._kept += len(images)
        # At the last batch rather than the epoch's end, where a WeightAveraging callback listed before this one has
        # already put the training weights back in place of the average that validation ran on.
        if batch_idx + 1 == trainer.num_val_batches[0]:
            self._end_validation(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._ended:  # a loader of unknown length, whose last batch was not known as such
            self._end_validation(trainer, pl_module)
        self._ended = False

    def _end_validation(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._ended = True
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        self._validations += 1
        drawing = self.every_n_epochs and self.active_views and trainer.is_global_zero and self._batches
        if not drawing or trainer.fast_dev_run:
            return
        self._undrawn = (trainer.global_step, trainer.current_epoch, batches_that_stepped(trainer))
        # An every_n_epochs-th validation, or foreseeably the run's last: after it no epoch up to max_epochs validates.
        epoch, every = trainer.current_epoch + 1, trainer.check_val_every_n_epoch or 1
        last = trainer.is_last_batch and 0 <= trainer.max_epochs < epoch + every
        if self._validations % self.every_n_epochs == 0 or last:
            self._log_pictures(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The last validation, if it was not drawn: max_steps, max_time or early stopping make it known only now.
        if self._undrawn is not None:
            self._log_pictures(trainer, pl_module)

    def draw(self, pl_module: AutoencoderModule, epoch: int | None = None) -> dict[str, Tensor]:
        """The pictures of ``active_views`` for the kept validation images, each ``[3, H, W]`` in [0, 1], titled with
        ``epoch`` (by default the model's current one); a ValueError before a validation of ``fit`` kept any."""
        if not self._batches:
            raise ValueError(
                f"ImageLogger {self.name!r} has no validation images to draw: it keeps them during a validation of fit "
                "(not in sanity checks); draw after one has run"
            )
        ordered = [self._batches[i] for i in sorted(self._batches)]
        sizes = ("num_images", "num_samples", "num_interpolations", "interpolation_steps", "latent_map_size", "nrow")
        return visualization.draw_views(
            pl_module,
            torch.cat([images for images, _ in ordered]),
            torch.cat([labels for _, labels in ordered]),
            self.active_views,
            class_names=self.class_names,
            title=f"{type(pl_module).__name__}, epoch {pl_module.current_epoch if epoch is None else epoch}",
            seed=self.seed,
            **{name: getattr(self, name) for name in sizes},
        )

    def log_image(self, trainer: L.Trainer, key: str, image: Tensor, *, step: int, epoch: int, logged_at: int) -> None:
        """Send ``image`` ``[3, H, W]`` to every logger that takes images at ``logged_at``, the step Lightning logs the
        validation's metrics at, or write a PNG named by ``epoch`` and optimizer ``step`` when none does."""
        sent = False
        for logger in trainer.loggers:
            sink = _image_sink(logger)
            if sink == "wandb":
                array = (image.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()
                logger.log_image(key=key, images=[array], step=logged_at, caption=[f"epoch {epoch}"])
            elif sink == "tensorboard":
                logger.experiment.add_image(key, image, global_step=logged_at)
            sent = sent or sink is not None
        if not sent and self.image_dir is not None:
            self.image_dir.mkdir(parents=True, exist_ok=True)
            path = self.image_dir / f"{key.rpartition('/')[2]}-epoch={epoch}-step={step}.png"
            visualization.save_png(image, path)
            self._told.info(f"ImageLogger: no logger takes images, so they are written to {self.image_dir}")

    def _log_pictures(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Draw and log the pictures of the latest validation, or, where training went on past it, of the model as it
        is now, beside its last training step's metrics."""
        step, epoch, logged_at = self._undrawn
        if step != trainer.global_step:
            step, epoch, logged_at = trainer.global_step, trainer.current_epoch - 1, batches_that_stepped(trainer) - 1
        self._undrawn = None
        images = self.draw(pl_module, epoch)
        if "latent_map" in self.active_views and "latent_map" not in images:
            self._told.info(f"ImageLogger: the latent map needs at least 2 validation images, got {self._kept}; it is "
                            "not drawn")  # fmt: skip
        for view, image in images.items():
            self.log_image(trainer, f"{self.name}/{view}", image, step=step, epoch=epoch, logged_at=logged_at)


def check_image_loggers(callbacks: Sequence[Callback]) -> None:
    """Refuse two enabled :class:`ImageLogger` of one ``name``, which would overwrite each other's pictures, and one
    listed before a ``WeightAveraging``, whose last pictures would show the training weights, not the average."""
    names = [cb.name for cb in callbacks if isinstance(cb, ImageLogger) and cb.every_n_epochs]
    for name in dict.fromkeys(names):
        if names.count(name) > 1:
            raise ConfigError(
                f"{names.count(name)} ImageLoggers are named {name!r}, so they would overwrite each other's "
                "pictures; give each its own name (`init_args: {name: ...}`, or --images.name for the images section)"
            )
    for i, callback in enumerate(callbacks):
        averaging = [cb for cb in callbacks[i:] if isinstance(cb, WeightAveraging)]
        if isinstance(callback, ImageLogger) and callback.every_n_epochs and averaging:
            raise ConfigError(
                f"ImageLogger {callback.name!r} comes before {type(averaging[0]).__name__} among the trainer's "
                "callbacks, so the pictures drawn when training ends would show the training weights rather than the "
                "average that validation saw (the averaging callback puts it in place after this one); list the "
                "ImageLogger after it"
            )


def _image_sink(logger: Logger) -> Literal["wandb", "tensorboard"] | None:
    """How ``logger`` takes images: W&B's ``log_image``, a TensorBoard-style ``add_image`` (tensorboardX's), or not."""
    if isinstance(logger, WandbLogger):
        return "wandb"
    return "tensorboard" if hasattr(getattr(logger, "experiment", None), "add_image") else None


class SaveConfigToRun(SaveConfigCallback):
    """LightningCLI's config saving; with a W&B logger the run's ``config.yaml`` goes into its run folder
    ``<save_dir>/<project>/<run id>/`` and, as ``ae_lightning_config.yaml``, among the W&B run's uploaded files (a W&B
    logger after the first gets the latter only). ``test``, ``validate`` and ``predict`` save theirs beside it as
    ``config-<subcommand>.yaml`` (``-v1``, ``-v2``, ... once taken)."""

    W_AND_B_NAME = "ae_lightning_config.yaml"

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if isinstance(trainer.logger, WandbLogger):
            self.save_to_log_dir = False
        super().setup(trainer, pl_module, stage)

    @staticmethod
    def run_folder(logger: WandbLogger, trainer: L.Trainer) -> Path:
        """The W&B run's own folder ``<save_dir>/<project>/<run id>/`` (the id given, before the run starts)."""
        return Path(logger.save_dir or trainer.default_root_dir) / str(logger.name) / str(logger.version)

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        own, copy = Path(self.config_filename), Path(self.W_AND_B_NAME)
        stage = TrainerFn(stage).value  # "fit", "validate", "test" or "predict"
        for logger in (logger for logger in trainer.loggers if isinstance(logger, WandbLogger)):
            folder = self.run_folder(logger, trainer) if logger is trainer.logger else None  # the run's folder
            tag, taken = ("" if stage == "fit" else f"-{stage}"), 0  # an evaluation keeps the training run's config
            while tag and folder and (folder / f"{own.stem}{tag}{own.suffix}").exists():
                taken += 1
                tag = f"-{stage}-v{taken}"
            paths = [folder / f"{own.stem}{tag}{own.suffix}"] if folder else []
            paths.append(Path(logger.experiment.dir) / f"{copy.stem}{tag}{copy.suffix}")
            for path in paths:
                path.parent.mkdir(parents=True, exist_ok=True)
                self.parser.save(self.config, path, skip_none=False, overwrite=self.overwrite, multifile=self.multifile)
            # W&B uploads (and `wandb sync` sends) only the files it is told of, not all that lie in the run's files
            logger.experiment.save(str(paths[-1]), base_path=logger.experiment.dir, policy="now")


def run_directory(trainer: L.Trainer) -> Path:
    """The folder of ``trainer``'s run, where its files go: a W&B run's own (rank 0's: a run given no id has one only
    where W&B started it), else ``trainer.log_dir`` or ``default_root_dir``. A collective call under DDP."""
    if isinstance(trainer.logger, WandbLogger):
        return Path(trainer.strategy.broadcast(str(SaveConfigToRun.run_folder(trainer.logger, trainer))))
    return Path(trainer.log_dir or trainer.default_root_dir)


class LoggerRunInCheckpoint(Callback):
    """Records in checkpoints the run of the trainer's first logger, whose folder ``<save_dir>/<name>/<version>``
    holds the run's checkpoints: its class path, ``name`` (a W&B run's project) and ``version`` as the folder's name
    (``version_<N>``, a W&B run's id); and under :attr:`wandb_key` every W&B logger's ``name`` and ``version``, in
    the loggers' order. ``--ckpt_path last`` and resumed W&B runs read them."""

    key = "ae_lightning_logger_run"
    wandb_key = "ae_lightning_wandb_runs"

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        logger = trainer.logger
        if logger is not None:
            version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
            kind = type(logger)
            checkpoint[self.key] = {"class_path": class_path(kind), "name": str(logger.name),
                                    "version": version}  # fmt: skip
        runs = [{"name": str(w.name), "version": str(w.version)} for w in trainer.loggers if isinstance(w, WandbLogger)]
        if runs:
            checkpoint[self.wandb_key] = runs


class EMAWeightAveraging(LightningEMA):
    """Lightning's :class:`~lightning.pytorch.callbacks.EMAWeightAveraging` (same arguments and checkpoints) whose
    average is kept on the training device when no ``device`` is given, as Lightning documents (docs/quantized.md)."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            pl_module.to(trainer.strategy.root_device)  # where the strategy moves it next
        super().setup(trainer, pl_module, stage)


class ClosingProgressBar(TQDMProgressBar):
    """Lightning's TQDM bar, whose open bars are closed (ending their lines) and flushed when the run fails, so that
    the command's error starts a line of its own in a terminal or a log."""

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        for name in ("val_progress_bar", "test_progress_bar", "predict_progress_bar", "train_progress_bar"):
            with contextlib.suppress(TypeError):  # that bar was never opened
                getattr(self, name).close()
        sys.stdout.flush()


__all__ = [
    "ClosingProgressBar",
    "EMAWeightAveraging",
    "ImageLogger",
    "LoggerRunInCheckpoint",
    "SaveConfigToRun",
    "check_image_loggers",
    "run_directory",
]

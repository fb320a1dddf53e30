"""The auto-decoder: a decoder trained jointly with one free code per training image, without an encoder
(Bojanowski et al. 2018, "Optimizing the Latent Space of Generative Networks" (GLO); Park et al. 2019, "DeepSDF:
Learning Continuous Signed Distance Functions for Shape Representation")."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from ae_lightning.base import Batch, DeterministicAutoencoder
from datamodules.checks import (
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    check_arguments,
    check_number,
)

# Where a checkpoint records the training split whose images its codes belong to (:func:`training_split`).
_SPLIT_KEY = "ae_lightning_codes_split"


def training_split(datamodule: Any) -> dict[str, Any] | None:
    """The data, seed, size and fingerprint of ``datamodule``'s in-memory training split, or None without one."""
    if "train" not in getattr(datamodule, "splits", {}):
        return None
    samples, content = datamodule.training_content()
    return {"data": datamodule.data_description, "seed": datamodule.hparams.get("seed"), "samples": samples,
            "fingerprint": content}  # fmt: skip


def check_same_split(trained: dict[str, Any] | None, mine: dict[str, Any] | None) -> None:
    """Raise a ValueError if codes trained on split ``trained`` would train on another, ``mine`` (None: unknown)."""
    if None in (trained, mine) or all(trained[key] == mine[key] for key in ("samples", "fingerprint")):
        return

    def described(split: dict[str, Any]) -> str:
        return f"{split['data']}, seed {split['seed']}, {split['samples']} images, fingerprint {split['fingerprint']}"

    setting = f"--data.seed {trained['seed']}" if trained["seed"] != mine["seed"] else "data settings"
    raise ValueError(
        f"AutoDecoder's codes belong, by position, to the images of the training split they were trained on "
        f"({described(trained)}), but this fit's training split holds others ({described(mine)}): each code would "
        f"train on another image. Fit with the codes' {setting}, or train a new AutoDecoder"
    )


class AutoDecoder(DeterministicAutoencoder):
    """A decoder and a table of per-image codes, optimized together; unseen images get codes by optimization.

    Training looks the batch's sample indices up in ``num_codes`` codes; the loss is
    ``recon + code_prior_weight * ||z||^2``. Unseen images (validation, test, predict, :meth:`encode`) get codes
    fitted to the same loss with the decoder frozen (``docs/internals.md``). Code ``i`` belongs to the training split's
    ``i``-th image: a fit on another split than the codes' (checkpoints record it) is refused.

    Args:
        num_codes: number of training images, or None to take it from the datamodule.
        code_lr: learning rate of the codes in training (the decoder's is the optimizer's).
        code_init_std: std of the codes' normal initialization.
        inference_steps: Adam steps (learning rate ``inference_lr``) that fit the codes of unseen images.
        **kwargs: the :class:`~ae_lightning.base.DeterministicAutoencoder` arguments but ``encoder``.
    """

    flat_codes_only = "its per-image codes are rows of an embedding table [num_codes, latent_dim]"

    def __init__(
        self,
        num_codes: PositiveInt | None = None,
        code_prior_weight: NonNegativeFloat = 0.5,
        code_lr: PositiveFloat = 0.01,
        code_init_std: NonNegativeFloat = 0.01,
        inference_steps: NonNegativeInt = 50,
        inference_lr: PositiveFloat = 0.1,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("encoder") is not None:
            raise ValueError("AutoDecoder has no encoder (codes are parameters, or fitted): give only a decoder")
        super().__init__(**kwargs)
        self.code_prior_weight = code_prior_weight
        self.code_lr = code_lr
        self.code_init_std = code_init_std
        self.inference_steps = inference_steps
        self.inference_lr = inference_lr
        self.codes: nn.Embedding | None = None
        self._kept_codes: list[tuple[int, Tensor, Tensor]] | None = None  # (steps, images, codes), see _keeping_codes
        self._codes_split: dict[str, Any] | None = None  # the training split the codes belong to (training_split)
        if num_codes is not None:
            self.build_codes(num_codes)

    def build_encoder(self) -> None:
        return None  # codes are parameters in training and fitted to unseen images

    @property
    def num_codes(self) -> int | None:
        """Number of training codes; None until known."""
        return None if self.codes is None else self.codes.num_embeddings

    def build_codes(self, num_codes: int) -> None:
        """Create the table of ``num_codes`` training codes and record its size in the hyperparameters."""
        check_arguments({"num_codes": num_codes}, AutoDecoder.__init__)
        num_codes = int(num_codes)  # a NumPy integer too, which a checkpoint's hyperparameters cannot hold
        self.codes = nn.Embedding(num_codes, self.latent_dim)
        nn.init.normal_(self.codes.weight, std=self.code_init_std)
        # Also into hparams_initial, which loggers write (hparams.yaml) once ``setup`` has built the codes.
        self.save_hyperparameters({"num_codes": num_codes})

    def encode(self, x: Tensor, y: Tensor | None = None, steps: int | None = None) -> Tensor:
        """Codes of images ``x`` fitted with the decoder frozen for ``steps`` (default ``inference_steps``)."""
        steps = self.inference_steps if steps is None else steps
        check_number("steps", steps, "[0, inf)", integer=True)
        if not isinstance(x, Tensor) or not x.is_floating_point():
            found = f"a {x.dtype} tensor" if isinstance(x, Tensor) else f"a {type(x).__name__}"
            raise ValueError(f"{type(self).__name__}.encode fits codes to float images in [0, 1], got {found}")
        self.check_tensor(x, "encode(x)")
        kept = self._kept_codes
        for kept_steps, images, codes in kept or ():
            if kept_steps == steps and images.shape == x.shape and torch.equal(images, x):
                return codes
        codes = self.fit_codes(x, steps)
        if kept is not None:
            kept.append((steps, x, codes))
        return codes

    def fit_codes(self, x: Tensor, steps: int) -> Tensor:
        """Fit codes to images ``x`` for ``steps`` Adam steps from the prior mean, the decoder frozen."""
        with torch.inference_mode(False), torch.enable_grad():
            target = x.detach().clone()  # a normal tensor, which autograd can save, even if x is an inference tensor
            z = torch.zeros(len(x), self.latent_dim, device=x.device, dtype=self.dtype, requires_grad=True)
            optimizer = torch.optim.Adam([z], lr=self.inference_lr)
            for _ in range(steps):
                loss = self.code_loss(z, target).sum()  # a sum: each image's code gets its own gradient
                (z.grad,) = torch.autograd.grad(loss, [z])  # gradients for the codes only, not the decoder
                optimizer.step()
        return z.detach()

    def code_loss(self, z: Tensor, x: Tensor) -> Tensor:
        """Per image, the reconstruction loss of code ``z`` plus the prior penalty."""
        return self.reconstruction_loss(self.decoder(z), x) + self.code_prior_weight * z.float().pow(2).sum(-1)

    def loss_terms(self, x: Tensor, labels: Tensor, indices: Tensor) -> dict[str, Tensor]:
        if self.training:
            if self.codes is None:
                raise ValueError("AutoDecoder has no training codes: set num_codes or train with a datamodule")
            bad = indices.min() if indices.min() < 0 else indices.max()  # the index out of range, if one is
            if indices.is_floating_point() or not 0 <= bad < self.num_codes:
                raise ValueError(
                    f"a training batch holds sample index {bad.item()!r} ({indices.dtype}), but AutoDecoder has "
                    f"num_codes={self.num_codes} codes, for the integers 0..{self.num_codes - 1}; num_codes must "
                    "equal the number of training images, and each sample's index be its position among them"
                )
            z = self.codes(indices)
        else:
            z = self.encode(x)
        recon = self.mean_reconstruction_loss(self.decoder(z), x)
        prior = self.code_prior_weight * z.float().pow(2).sum(-1).mean()
        return {"loss": recon + prior, "recon": recon, "code_prior": prior}

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        with self._keeping_codes():
            super().test_step(batch, batch_idx)

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        with self._keeping_codes():
            return super().predict_step(batch, batch_idx)

    @contextlib.contextmanager
    def _keeping_codes(self) -> Iterator[None]:
        # One batch: the decoder cannot change within it, so codes fitted to these images stay right until it ends.
        self._kept_codes = []
        try:
            yield
        finally:
            self._kept_codes = None

    def configure_optimizers(self) -> Any:
        groups = [
            {"params": list(self.decoder.parameters())},
            {"params": list(self.codes.parameters()), "lr": self.code_lr},
        ]
        return self.build_optimizer(groups, self.optimizer_factory, self.lr_scheduler_factory)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage != "fit":
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        size = datamodule.split_size("train") if hasattr(datamodule, "split_size") else None
        if self.codes is None:
            if size is None:
                raise ValueError(
                    "AutoDecoder needs num_codes (the number of training images) when the data do not come from a "
                    "datamodule with split_size"
                )
            self.build_codes(size)
        elif size is not None and size != self.num_codes:
            raise ValueError(
                f"AutoDecoder has num_codes={self.num_codes} codes, but the training set of "
                f"{type(datamodule).__name__} has {size} images; they must be equal (leave num_codes unset to take "
                "it from the data)"
            )
        mine = training_split(datamodule)
        check_same_split(self._codes_split, mine)
        self._codes_split = mine or self._codes_split

    def check_resume(self, checkpoint: dict[str, Any]) -> None:
        super().check_resume(checkpoint)
        check_same_split(checkpoint.get(_SPLIT_KEY), self._codes_split)  # this fit's, once ``setup`` has run

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[_SPLIT_KEY] = self._codes_split

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self._codes_split = checkpoint.get(_SPLIT_KEY) or self._codes_split
        stored = checkpoint["state_dict"].get("codes.weight")
        if stored is None:
            return
        if self.codes is None:
            self.build_codes(len(stored))
        elif len(stored) != self.num_codes:
            raise ValueError(
                f"the checkpoint holds {len(stored)} codes, but this AutoDecoder has num_codes={self.num_codes} "
                "(the size of its training set)"
            )

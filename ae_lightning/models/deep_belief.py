"""The deep autoencoder pretrained as a stack of RBMs (Hinton & Salakhutdinov 2006, "Reducing the Dimensionality of
Data with Neural Networks"): greedy layer-wise contrastive divergence, then the stack unrolled and fine-tuned."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.optim import Optimizer

from ae_lightning.base import Batch, DeterministicAutoencoder, unpack_batch
from ae_lightning.blocks import losses, rbm
from ae_lightning.blocks.networks import mlp_layers
from datamodules.checks import Fraction, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

Pretrain = Literal["rbm", "none"]


def rbm_phase(epoch: int, pretrain_epochs: int, rbms: int) -> int | None:
    """The RBM (from 0, bottom up) that ``epoch`` pretrains with ``pretrain_epochs`` per RBM, or None: fine-tuning."""
    index = epoch // pretrain_epochs if pretrain_epochs else rbms
    return index if index < rbms else None


class DeepBeliefAutoencoder(DeterministicAutoencoder):
    """A logistic MLP autoencoder whose encoder is pretrained greedily as a stack of RBMs, then fine-tuned end to end.

    Epochs ``[i P, (i + 1) P)`` (``P = pretrain_epochs``) train RBM ``i + 1`` with CD-k (logs ``pretrain/rbm<i>/``);
    then the stack is unrolled (tied, transposed) and fine-tuned on ``reconstruction`` with ``optimizer``.
    ``pretrain: none`` fine-tunes the same network from a random start. One step per batch (``docs/family.md``).

    Args:
        cd_steps: k of CD-k.
        pretrain_lr: SGD learning rate of the logistic RBMs; ``code_pretrain_lr`` of the top one (linear hidden units).
        pretrain_momentum: SGD momentum of the pretraining; ``pretrain_weight_decay``: L2 penalty on the RBMs' weights.
        gradient_clip_val: clip the fine-tuning gradients to this norm (``gradient_clip_algorithm``) or value; None or
            0: no clipping.
        **kwargs: the :class:`~ae_lightning.base.DeterministicAutoencoder` arguments; ``hidden_dims`` are the widths
            of the RBM stack below the code (``network: mlp`` only).
    """

    partial_backward = True  # the visible biases get no gradient in fine-tuning

    def __init__(
        self,
        pretrain: Pretrain = "rbm",
        pretrain_epochs: NonNegativeInt = 10,
        cd_steps: PositiveInt = 1,
        pretrain_lr: PositiveFloat = 0.1,
        code_pretrain_lr: PositiveFloat = 0.001,
        pretrain_momentum: Fraction = 0.9,
        pretrain_weight_decay: NonNegativeFloat = 2e-4,
        gradient_clip_val: NonNegativeFloat | None = None,
        gradient_clip_algorithm: Literal["norm", "value"] = "norm",
        **kwargs: Any,
    ) -> None:
        for name, default in (("network", "mlp"), ("dropout", 0.0), ("encoder", None), ("decoder", None)):
            if kwargs.get(name, default) != default:
                raise ValueError(f"DeepBeliefAutoencoder takes only {name}={default!r}, got {kwargs[name]!r}")
        super().__init__(**kwargs)
        if len(self.input_shape) != 3:
            raise ValueError(
                f"DeepBeliefAutoencoder's Bernoulli RBMs model pixels in [0, 1], got input_shape {self.input_shape} "
                "(feature vectors): use another variant for vectors"
            )
        self.automatic_optimization = False
        self.pretrain = pretrain
        self.pretrain_epochs = pretrain_epochs if pretrain == "rbm" else 0
        self.cd_steps = cd_steps
        self.pretrain_lr, self.code_pretrain_lr = pretrain_lr, code_pretrain_lr
        self.pretrain_momentum, self.pretrain_weight_decay = pretrain_momentum, pretrain_weight_decay
        self.set_gradient_clipping(gradient_clip_val, gradient_clip_algorithm)
        self.visible_biases = nn.ParameterList()
        if pretrain == "rbm":
            for layer in self.rbm_layers():
                nn.init.normal_(layer.weight, std=0.01)  # Hinton's "practical guide": small random weights
                nn.init.zeros_(layer.bias)
                self.visible_biases.append(nn.Parameter(torch.zeros(layer.in_features)))
        self.register_buffer("unrolled", torch.tensor(pretrain == "none"))

    def layer_sizes(self) -> list[int]:
        """The widths from the pixels up to the code."""
        return [math.prod(self.input_shape), *self.hparams.hidden_dims, self.latent_dim]

    def build_encoder(self) -> nn.Module:
        """The RBM stack, bottom up: logistic layers to a linear code."""
        return nn.Sequential(nn.Flatten(), *mlp_layers(self.layer_sizes(), nn.Sigmoid))

    def build_decoder(self) -> nn.Module:
        """The stack unrolled: logistic layers from the code back to pixel logits."""
        return nn.Sequential(*mlp_layers(self.layer_sizes()[::-1], nn.Sigmoid), nn.Unflatten(1, self.input_shape))

    def rbm_layers(self) -> list[nn.Linear]:
        """The encoder's linear layers, bottom up: RBM ``i``'s weights and hidden biases."""
        return [layer for layer in self.encoder if isinstance(layer, nn.Linear)]

    def decoder_logits(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """The decoder's logits; before the stack is unrolled, through the tied (transposed) RBM weights."""
        if self.unrolled:
            return self.decoder(z)
        h = z
        for i, layer in reversed(list(enumerate(self.rbm_layers()))):
            h = F.linear(h, layer.weight.t(), self.visible_biases[i])
            h = torch.sigmoid(h) if i > 0 else h
        return h.unflatten(1, self.input_shape)

    @torch.no_grad()
    def unroll(self) -> None:
        """Give each decoder layer the transposed weights and the visible biases of its RBM."""
        decoder_layers = [layer for layer in self.decoder if isinstance(layer, nn.Linear)]
        for encoder_layer, decoder_layer, visible_bias in zip(
            reversed(self.rbm_layers()), decoder_layers, reversed(self.visible_biases)
        ):
            decoder_layer.weight.copy_(encoder_layer.weight.t())
            decoder_layer.bias.copy_(visible_bias)
        self.unrolled.fill_(True)

    def rbm_index(self, epoch: int) -> int | None:
        """The RBM (from 0, bottom up) that epoch ``epoch`` pretrains, or None for a fine-tuning epoch."""
        return rbm_phase(epoch, self.pretrain_epochs, len(self.rbm_layers()))

    def check_resume(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a ``pretrain``/``pretrain_epochs`` that would give the checkpoint's epochs other phases."""
        stored = checkpoint.get("hyper_parameters", {})
        mode, per_rbm = stored.get("pretrain", self.pretrain), stored.get("pretrain_epochs", self.pretrain_epochs)
        epoch, rbms = int(checkpoint.get("epoch", 0)), len(self.rbm_layers())
        before = [rbm_phase(e, per_rbm if mode == "rbm" else 0, rbms) for e in range(epoch + 1)]
        changed = [e for e in range(epoch + 1) if before[e] != self.rbm_index(e)]
        if changed:
            phase = "fine-tuning" if before[epoch] is None else f"pretraining RBM {before[epoch] + 1}"
            fix = [f"pretrain={mode!r}"] if mode != self.pretrain else []
            fix += [f"pretrain_epochs={per_rbm}"] if mode == "rbm" else []
            raise ValueError(
                f"the checkpoint was trained with pretrain={mode!r}, pretrain_epochs={per_rbm} and has reached epoch "
                f"{epoch}; this run's pretrain={self.pretrain!r}, pretrain_epochs={self.hparams.pretrain_epochs} "
                f"would give epoch {changed[0]} another phase than it had (the checkpoint is {phase}). Resume with "
                f"{', '.join(fix)}, or start afresh without --ckpt_path"
            )

    def training_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        x, labels, indices = unpack_batch(batch)
        self._check_batch(x, "train")
        index = self.rbm_index(self.current_epoch)
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        if index is not None:
            terms = self.pretraining_step(x, index, optimizers[1])
            self.log_terms(terms, f"pretrain/rbm{index + 1}", batch_size=len(x))  # type: ignore[arg-type]
        else:
            terms = self.loss_terms(x, labels, indices)
            self.manual_step(optimizers[0], terms["loss"])
            self.step_schedulers("step", batch_idx + 1)  # the fine-tuning's step-interval schedulers, per its steps
            terms = {name: value.detach() for name, value in terms.items()}
            self.log_terms(terms, "train", batch_size=len(x))
            self.step_epoch_schedulers()  # the fine-tuning schedulers, at its epochs' last batches (before checkpoints)
        return terms

    @torch.no_grad()
    def pretraining_step(self, x: Tensor, index: int, optimizer: Optimizer) -> dict[str, Tensor]:
        """One CD-k step of RBM ``index`` on the hidden means that batch ``x`` gives the layers below it."""
        layers = self.rbm_layers()
        # The CD statistics in the weights' dtype: float32 under mixed precision, float64 under 64-true
        with torch.autocast(self.device.type, enabled=False):
            v = x.flatten(1).to(layers[index].weight.dtype)
            for layer in layers[:index]:
                v = torch.sigmoid(layer(v))
            layer, visible_bias = layers[index], self.visible_biases[index]
            hidden = "gaussian" if index == len(layers) - 1 else "bernoulli"
            update = rbm.contrastive_divergence(v, layer.weight, visible_bias, layer.bias, self.cd_steps, hidden)
            gradient = update.gradient()
            if self.trainer.world_size > 1:  # no backward, so no DDP all-reduce: average the estimates here
                gradient = [self.trainer.strategy.reduce(g, reduce_op="mean") for g in gradient]
            optimizer.zero_grad()
            for parameter, ascent in zip((layer.weight, visible_bias, layer.bias), gradient):
                parameter.grad = -ascent  # the optimizer descends; CD estimates the log-likelihood's ascent
            optimizer.step()
            recon = (v - update.reconstruction).pow(2).sum(1).mean()
            energy = rbm.free_energy(v, layer.weight, visible_bias, layer.bias, hidden).mean()
        return {"recon": recon, "free_energy": energy}

    def loss_terms(self, x: Tensor, labels: Tensor, indices: Tensor) -> dict[str, Tensor]:
        recon = self.mean_reconstruction_loss(self.decoder_logits(self.encoder(x)), x)
        return {"loss": recon, "recon": recon}

    def test_metrics(
        self, x: Tensor, y: Tensor | None = None, reconstruction: Tensor | None = None
    ) -> dict[str, Tensor]:
        """``squared_error``: the reconstruction's squared error summed per image (the paper's measure)."""
        reconstruction = self(x) if reconstruction is None else reconstruction
        return {"squared_error": losses.squared_error(reconstruction.float(), x).mean()}

    def configure_optimizers(self) -> list[dict[str, Any]]:
        """The fine-tuning optimizer over encoder and decoder, then (with ``pretrain: rbm``) the RBMs' SGD."""
        fine_tuning = [*self.encoder.parameters(), *self.decoder.parameters()]
        configured = [self.build_optimizer(fine_tuning, self.optimizer_factory, self.lr_scheduler_factory)]
        if self.pretrain == "rbm":
            layers, groups = self.rbm_layers(), []
            for i, (layer, visible_bias) in enumerate(zip(layers, self.visible_biases)):
                lr = self.code_pretrain_lr if i == len(layers) - 1 else self.pretrain_lr
                groups += [
                    {"params": [layer.weight], "lr": lr, "weight_decay": self.pretrain_weight_decay},
                    {"params": [visible_bias, layer.bias], "lr": lr, "weight_decay": 0.0},
                ]
            configured.append({"optimizer": torch.optim.SGD(groups, momentum=self.pretrain_momentum)})
        return configured

    def on_fit_start(self) -> None:
        super().on_fit_start()
        pretraining = self.pretrain_epochs * len(self.rbm_layers())
        max_epochs = self.trainer.max_epochs
        if pretraining and max_epochs is not None and 0 <= max_epochs <= pretraining:
            rank_zero_warn(
                f"max_epochs={max_epochs} leaves no fine-tuning epoch after the {pretraining} pretraining epochs "
                f"({len(self.rbm_layers())} RBMs x pretrain_epochs={self.pretrain_epochs})"
            )

    def on_train_start(self) -> None:
        # here, not in on_fit_start: a resumed run's epoch (and stack) is restored by now
        pretraining = self.pretrain_epochs * len(self.rbm_layers())
        index = self.rbm_index(self.current_epoch)
        if index is not None and self.unrolled:  # a fit again from epoch 0 of a fine-tuned model
            raise ValueError(
                f"this DeepBeliefAutoencoder is unrolled and fine-tuned, but the fit starts at epoch "
                f"{self.current_epoch}, which pretrains RBM {index + 1}: CD steps would overwrite the fine-tuned "
                "encoder. Resume its run with ckpt_path, or fine-tune it further as "
                "DeepBeliefAutoencoder.load_from_checkpoint(path, pretrain_epochs=0)"
            )
        if self.current_epoch < pretraining and self.trainer.precision == "16-mixed":
            raise ValueError(
                "RBM pretraining has no gradient scaler: use 32 or bf16-mixed precision or pretrain: none for its "
                f"epochs {self.current_epoch}-{pretraining - 1}; 16-mixed fine-tunes: pretrain first (max_epochs "
                f"{pretraining}), then resume from that run's last checkpoint with it"
            )
        stoppers = [c for c in self.trainer.callbacks if isinstance(c, EarlyStopping)]
        if stoppers and self.current_epoch < pretraining:
            raise ValueError(
                f"EarlyStopping(monitor={stoppers[0].monitor!r}) would count the RBM pretraining epochs "
                f"{self.current_epoch}-{pretraining - 1}, whose metrics are not the fine-tuning's, and may stop the "
                f"run before it fine-tunes: pretrain first (max_epochs {pretraining}), then resume from that run's "
                "last checkpoint with the EarlyStopping callback"
            )

    def on_train_epoch_start(self) -> None:
        if self.rbm_index(self.current_epoch) is None and not self.unrolled:
            self.unroll()

    def on_train_epoch_end(self) -> None:
        if self.rbm_index(self.current_epoch) is None:  # the fine-tuning schedulers count fine-tuning epochs
            super().on_train_epoch_end()
        else:  # a pretraining epoch's val/loss (the tied stack's) is not for the fine-tuning's ReduceLROnPlateau
            self._plateau_val_loss = None

    def step_schedulers(self, interval: Literal["step", "epoch"], count: int) -> None:
        """The base's steps, epoch-interval ``frequency`` counted in fine-tuning epochs."""
        pretraining = self.pretrain_epochs * len(self.rbm_layers()) if interval == "epoch" else 0
        super().step_schedulers(interval, count - pretraining)

    def clips(self, optimizer: Optimizer) -> bool:
        return optimizer is self.trainer.optimizers[0]  # fine-tuning's: pretraining sets its gradients itself

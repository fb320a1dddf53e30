"""A prior over the codes of a frozen quantized autoencoder: the second stage of VQ-VAE (van den Oord et al. 2017,
section 3.2) and VQGAN (Esser et al. 2021), here a small causal transformer over the code indices in raster order."""

from __future__ import annotations

import hashlib
import io
import math
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.fabric.utilities.cloud_io import get_filesystem
from torch import Tensor, nn

from ae_lightning.base import AutoencoderModule, check_sample_count
from ae_lightning.lightning_internals import without_cli_hyperparameters
from ae_lightning.models.quantized import QuantizedAutoencoder
from datamodules.checks import Fraction, PositiveFloat, PositiveInt, check_arguments

# What a prior's checkpoint keeps of its tokenizer's checkpoint besides the weights (which are the prior's tokenizer.*)
_TOKENIZER_RECORD = "ae_lightning_class hyper_parameters hparams_name hparams_type pytorch-lightning_version".split()
_TOKENIZER_PARTS = ("encoder", "quantizer", "decoder")  # what maps images to codes and back
# Set by CodePrior.load_from_checkpoint: the tokenizer rebuilt from the checkpoint, and its record.
_REBUILT_TOKENIZER: ContextVar[tuple[QuantizedAutoencoder, dict] | None] = ContextVar("rebuilt_tokenizer", default=None)


def state_fingerprint(state: dict[str, Tensor]) -> str:
    """A hash of the names and values of ``state``'s tensors, those that float32 holds exactly hashed as float32."""
    digest = hashlib.sha256()
    for name, value in sorted(state.items()):
        value = value.detach().cpu()
        if value.is_floating_point() and (value.dtype != torch.float64 or torch.equal(value.float().double(), value)):
            value = value.float()  # bfloat16 under bf16-true (numpy has none), float64 under 64-true
        digest.update(name.encode())
        digest.update(value.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def tokenizer_fingerprint(autoencoder: QuantizedAutoencoder | dict[str, Tensor]) -> str:
    """The :func:`state_fingerprint` of the encoder, quantizer and decoder of ``autoencoder`` (or its state_dict)."""
    state = autoencoder if isinstance(autoencoder, dict) else autoencoder.state_dict()
    return state_fingerprint({name: value for name, value in state.items() if name.split(".")[0] in _TOKENIZER_PARTS})


class CodePrior(AutoencoderModule):
    """An autoregressive prior ``p(c) = prod_i p(c_i | c_<i)`` over the ``L = Q h w`` code indices of a frozen
    :class:`~ae_lightning.models.quantized.QuantizedAutoencoder` (the tokenizer), in raster order with the residual
    levels of one position adjacent.

    ``encode`` gives the tokens ``[B, L]`` (``latent_shape`` is ``(L,)``), ``decode`` the tokenizer's images of them.
    The loss is the tokens' cross-entropy (nats per token), logged with ``bits_per_image`` and ``bits_per_pixel``.
    The checkpoint holds the tokenizer; a prior built from ``tokenizer`` refuses a checkpoint whose tokenizer differs.

    Args:
        tokenizer: checkpoint of the trained quantized autoencoder whose codes are modelled (a loaded prior's record).
        embed_dim, num_layers, num_heads: the transformer's width, layers and attention heads.
        dropout: dropout in the transformer, in training only.
        **kwargs: the :class:`~ae_lightning.base.AutoencoderModule` arguments; ``input_shape`` must be the
            tokenizer's; ``latent_dim``, ``network``, ``hidden_dims`` ignored; ``encoder``, ``decoder`` refused.
    """

    is_generative = True
    discrete_codes = True

    def __init__(
        self,
        tokenizer: str,
        embed_dim: PositiveInt = 128,
        num_layers: PositiveInt = 4,
        num_heads: PositiveInt = 4,
        dropout: Fraction = 0.0,
        **kwargs: Any,
    ) -> None:
        check_arguments(locals(), CodePrior.__init__)  # before the tokenizer loads
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} must be a multiple of num_heads={num_heads}")
        for name in ("encoder", "decoder"):
            if kwargs.get(name) is not None:
                raise ValueError(f"{type(self).__name__} encodes and decodes with its tokenizer: it takes no {name}")
        autoencoder, record = _REBUILT_TOKENIZER.get() or _read_tokenizer(tokenizer)
        input_shape = tuple(kwargs.pop("input_shape", autoencoder.input_shape))
        if input_shape != autoencoder.input_shape:
            raise ValueError(
                f"the tokenizer {tokenizer} takes images of shape {autoencoder.input_shape}, but input_shape is "
                f"{input_shape}"
            )
        kwargs |= {"latent_dim": autoencoder.latent_dim, "network": "conv", "hidden_dims": [1]}
        super().__init__(input_shape=input_shape, **kwargs)
        self.tokenizer = autoencoder.requires_grad_(False).eval()
        self.tokenizer_record = record
        self.levels, height, width = self.tokenizer.encode_indices(torch.zeros(1, *input_shape)).shape[1:]
        self.code_grid = (height, width)
        self.num_tokens = self.levels * height * width
        self.latent_shape = (self.num_tokens,)  # encode's tokens, as every variant's codes are [B, *latent_shape]
        self.vocabulary = autoencoder.codebook_size
        self.token_embedding = nn.Embedding(self.vocabulary + 1, embed_dim)  # the last token starts every sequence
        self.position_embedding = nn.Parameter(torch.zeros(self.num_tokens, embed_dim))
        nn.init.normal_(self.position_embedding, std=0.02)
        layer = nn.TransformerEncoderLayer(
            embed_dim, num_heads, 4 * embed_dim, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.transformer = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, self.vocabulary))
        self.register_buffer("causal_mask", nn.Transformer.generate_square_subsequent_mask(self.num_tokens), False)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> CodePrior:
        """Lightning's ``load_from_checkpoint``, the tokenizer rebuilt from the checkpoint (or read from its file)."""
        data, checkpoint = _read_once(checkpoint_path, kwargs.get("weights_only"))
        record, rebuilt = checkpoint.get("ae_lightning_tokenizer_record"), None
        if record is None or "tokenizer" in kwargs:
            path = Path(kwargs.get("tokenizer", checkpoint.get("hyper_parameters", {}).get("tokenizer", "")))
            if record is None and "ae_lightning_tokenizer" in checkpoint and not path.is_file():
                raise FileNotFoundError(
                    f"{checkpoint_path} was saved before prior checkpoints held their tokenizer's settings, so it "
                    f"needs the tokenizer checkpoint it was trained on, {path} (relative to the working folder), which "
                    "does not exist: load it from the folder it was trained in, or pass tokenizer=<that checkpoint>"
                )
        else:
            rebuilt = _rebuild_tokenizer(record, checkpoint["state_dict"]), record
        token = _REBUILT_TOKENIZER.set(rebuilt)
        del checkpoint  # Lightning loads its own copy
        try:
            return super().load_from_checkpoint(data, *args, **kwargs)
        finally:
            _REBUILT_TOKENIZER.reset(token)

    @property
    def fingerprint(self) -> str:
        """The :func:`tokenizer_fingerprint` of the tokenizer's current weights."""
        return tokenizer_fingerprint(self.tokenizer)

    def build_encoder(self) -> None:  # the tokenizer encodes and decodes
        return None

    build_decoder = build_encoder  # type: ignore[assignment]

    def encode(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """The tokenizer's code indices of images ``x`` as tokens ``[B, L]`` (int64); labels ``y`` unused."""
        self.check_tensor(x, "encode(x)")
        return self.tokenizer.encode_indices(x).permute(0, 2, 3, 1).flatten(1).long()  # from [B, Q, h, w]

    def decode(self, tokens: Tensor, y: Tensor | None = None) -> Tensor:
        """Images in [0, 1] of tokens ``[B, L]``; labels ``y`` unused."""
        self.check_tokens(tokens, "decode(tokens)")
        indices = tokens.reshape(len(tokens), *self.code_grid, self.levels).permute(0, 3, 1, 2)
        return self.tokenizer.decode_indices(indices)

    def logits(self, tokens: Tensor) -> Tensor:
        """Logits ``[B, L, K]`` of each token given the tokens before it; the tokens' values are not checked."""
        self.check_tokens(tokens, "logits(tokens)", values=False)  # no device sync: the training step calls it
        inputs = torch.cat([torch.full_like(tokens[:, :1], self.vocabulary), tokens[:, :-1]], 1)
        h = self.token_embedding(inputs) + self.position_embedding
        h = self.transformer(h, mask=self.causal_mask, is_causal=True)
        return self.head(h)

    @torch.no_grad()
    def next_token_probabilities(self, tokens: Tensor, position: int) -> Tensor:
        """``p(c_position | c_<position)`` ``[B, K]`` in float64, whatever ``tokens`` hold from ``position`` on."""
        known = tokens.clone()
        known[:, position:] = 0
        return F.softmax(self.logits(known)[:, position].double(), dim=-1)

    @torch.no_grad()
    def sample_tokens(self, n: int, temperature: PositiveFloat = 1.0) -> Tensor:
        """``n`` token sequences ``[n, L]`` drawn from the prior, one position at a time."""
        check_sample_count(n, "sample_tokens")
        check_arguments({"temperature": temperature}, CodePrior.sample_tokens)
        tokens = torch.zeros(n, self.num_tokens, dtype=torch.long, device=self.device)
        for position in range(self.num_tokens):
            # tempered in log space: p ** (1 / T) underflows to all zeros at a low temperature
            tempered = (self.next_token_probabilities(tokens, position).log() / temperature).softmax(-1)
            tokens[:, position] = torch.multinomial(tempered.float(), 1).squeeze(1)
        return tokens

    @torch.no_grad()
    def sample(self, n: int, y: Tensor | None = None, temperature: PositiveFloat = 1.0) -> Tensor:
        """``n`` images of token sequences drawn from the prior at ``temperature`` (no labels ``y``: unconditional)."""
        check_sample_count(n, y=y)
        return self.decode(self.sample_tokens(n, temperature))

    def token_nll(self, tokens: Tensor) -> Tensor:
        """``-log p(tokens)`` per sequence, in nats ``[B]``."""
        self.check_tokens(tokens, "token_nll(tokens)")
        return self._nll(tokens)

    def _nll(self, tokens: Tensor) -> Tensor:
        """:meth:`token_nll` of tokens from :meth:`encode` (their values unchecked: no device sync)."""
        return F.cross_entropy(self.logits(tokens).float().transpose(1, 2), tokens, reduction="none").sum(1)

    def bits_per_image(self, x: Tensor) -> Tensor:
        """The codes' negative log-likelihood per image of ``x``, in bits ``[B]``."""
        return self._nll(self.encode(x)) / math.log(2)

    def anomaly_score(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """The codes' bits per image."""
        return self.bits_per_image(x)

    def check_tokens(self, tokens: Any, call: str, values: bool = True) -> None:
        """Raise a ValueError unless ``tokens`` (of ``call``) are int64 ``[B, L]`` in ``[0, K)`` (if ``values``)."""
        range_ = f"[0, {self.vocabulary - 1}]"
        expected = f"{type(self).__name__}.{call} takes int64 tokens [B, {self.num_tokens}] in {range_}"
        if not isinstance(tokens, Tensor):
            raise ValueError(f"{expected}, got a {type(tokens).__name__}")
        if tokens.dtype != torch.long or tokens.shape[1:] != (self.num_tokens,):
            raise ValueError(f"{expected}, got a {tokens.dtype} tensor of shape {list(tokens.shape)}")
        if values and tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.vocabulary):  # K: the start token
            raise ValueError(f"{expected}, got values from {tokens.min().item()} to {tokens.max().item()}")

    def check_tokenizer(self, autoencoder: QuantizedAutoencoder, name: str = "the given autoencoder") -> None:
        """Raise a ValueError naming both if ``autoencoder`` is not the tokenizer this prior was trained on."""
        other = tokenizer_fingerprint(autoencoder)
        if other != self.fingerprint:
            raise ValueError(
                f"this prior models the codes of tokenizer {self.fingerprint} ({self.hparams.tokenizer}), but {name} "
                f"is tokenizer {other}: its codes mean something else. Train a prior on {name}'s codes"
            )

    def loss_terms(self, x: Tensor, labels: Tensor, indices: Tensor) -> dict[str, Tensor]:
        with torch.no_grad():
            tokens = self.encode(x)
        nll = self._nll(tokens).mean()
        bits = nll / math.log(2)
        pixels = self.input_shape[1] * self.input_shape[2]
        return {"loss": nll / self.num_tokens, "bits_per_image": bits.detach(), "bits_per_pixel": bits / pixels}

    def train(self, mode: bool = True) -> CodePrior:
        super().train(mode)
        self.tokenizer.eval()  # frozen: its codebook must not move with EMA updates
        return self

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["ae_lightning_tokenizer"] = self.fingerprint
        checkpoint["ae_lightning_tokenizer_record"] = self.tokenizer_record

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        stored = checkpoint.get("ae_lightning_tokenizer")
        # Under bf16-true the prior was trained, and saved, with its tokenizer's weights rounded to bfloat16; Lightning
        # calls this hook before it rounds the weights of a resumed run's tokenizer: compare them rounded alike.
        saved = checkpoint.get("state_dict", {})
        state = {
            name: value.to(saved[f"tokenizer.{name}"].dtype) if f"tokenizer.{name}" in saved else value
            for name, value in self.tokenizer.state_dict().items()
        }
        held = tokenizer_fingerprint(state)
        if stored is not None and stored != held:
            raise ValueError(
                f"the checkpoint's prior was trained on the codes of tokenizer {stored}, but {self.hparams.tokenizer} "
                f"now holds tokenizer {held}; point tokenizer at the checkpoint the prior was trained on"
            )


def _read_tokenizer(path: str | Path) -> tuple[QuantizedAutoencoder, dict[str, Any]]:
    """The quantized autoencoder of checkpoint ``path`` (CPU, frozen) and its record for :func:`_rebuild_tokenizer`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer checkpoint {path} does not exist; train one with configs/vqvae.yaml")
    try:
        data, checkpoint = _read_once(path, weights_only=False)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError, ... depending on the damage
        raise ValueError(f"tokenizer {path} is not a readable checkpoint (truncated or corrupt?): {error}") from None
    stored = checkpoint.get("ae_lightning_class", "?")
    if not stored.endswith(".QuantizedAutoencoder"):
        raise ValueError(f"a prior needs a QuantizedAutoencoder's codes, but {path} holds a {stored}")
    record = {key: checkpoint[key] for key in _TOKENIZER_RECORD if key in checkpoint}
    del checkpoint
    return _load_tokenizer(data), record


def _rebuild_tokenizer(record: dict[str, Any], state: dict[str, Tensor]) -> QuantizedAutoencoder:
    """The tokenizer whose checkpoint held ``record``, with the ``tokenizer.*`` weights of a prior's ``state``."""
    weights = {k.removeprefix("tokenizer."): v for k, v in state.items() if k.startswith("tokenizer.")}
    buffer = io.BytesIO()
    torch.save({**record, "state_dict": weights}, buffer)
    buffer.seek(0)
    return _load_tokenizer(buffer)


def _load_tokenizer(data: io.BytesIO) -> QuantizedAutoencoder:
    """The QuantizedAutoencoder of checkpoint bytes ``data``, on the CPU, frozen."""
    # Under ``ae-lightning`` the tokenizer would otherwise take the prior's settings as its hyperparameters.
    load = QuantizedAutoencoder.load_from_checkpoint
    return without_cli_hyperparameters(load, data, map_location="cpu").requires_grad_(False).eval()


def _read_once(checkpoint: Any, weights_only: bool | None) -> tuple[io.BytesIO, dict[str, Any]]:
    """The bytes of checkpoint file or file object ``checkpoint``, read once, and the checkpoint they hold."""
    if isinstance(checkpoint, (str, Path)):  # a local file or a URL (``s3://...``), as Lightning reads it
        with get_filesystem(checkpoint).open(str(checkpoint), "rb") as file:
            data = io.BytesIO(file.read())
    else:
        data = checkpoint if isinstance(checkpoint, io.BytesIO) else io.BytesIO(checkpoint.read())
    position = data.tell()
    loaded = torch.load(data, map_location="cpu", weights_only=weights_only)
    data.seek(position)
    return data, loaded


__all__ = ["CodePrior", "state_fingerprint", "tokenizer_fingerprint"]

"""Inverse autoregressive flow (Kingma et al. 2016) built from MADE networks (Germain et al. 2015)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 ``mask`` ``[out, in]``, kept in its state dict."""

    def __init__(self, mask: Tensor) -> None:
        super().__init__(mask.shape[1], mask.shape[0])
        self.register_buffer("mask", mask.float())

    def forward(self, inputs: Tensor) -> Tensor:
        return F.linear(inputs, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """An autoregressive MLP ``dim -> *hidden_dims -> 2 dim`` (ReLU): outputs ``m_i`` and ``s_i`` depend on
    ``z_{<i}`` only, and on a context vector of ``context_dim`` (0: none) that the first hidden layer sees. Hidden
    degrees cycle through ``1 .. D - 1`` (Germain et al. 2015, section 4), or ``0 .. D - 1`` with a context."""

    def __init__(self, dim: int, hidden_dims: Sequence[int], context_dim: int = 0) -> None:
        super().__init__()
        if context_dim and not hidden_dims:
            raise ValueError("a MADE that takes a context needs at least one hidden layer (hidden_dims is empty)")
        self.context = nn.Linear(context_dim, hidden_dims[0], bias=False) if context_dim else None
        hidden = [torch.arange(w) % dim if context_dim else torch.arange(w) % max(1, dim - 1) + 1 for w in hidden_dims]
        degrees = [torch.arange(1, dim + 1), *hidden]
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(degrees[:-1], degrees[1:]):
            layers += [MaskedLinear(fan_out[:, None] >= fan_in[None, :]), nn.ReLU()]
        output_degrees = torch.arange(1, dim + 1).repeat(2)
        layers.append(MaskedLinear(output_degrees[:, None] > degrees[-1][None, :]))
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The shift ``m`` and the pre-gate ``s``, each ``[..., D]``, of codes ``z`` and their ``context``."""
        if (context is None) != (self.context is None):
            raise ValueError("this MADE takes a context vector" if context is None else "this MADE takes no context")
        hidden = self.net[0](z) + (self.context(context) if context is not None else 0)
        return self.net[1:](hidden).chunk(2, dim=-1)


class IAFStep(nn.Module):
    """One numerically stable IAF step (Kingma et al. 2016, eq. 14): ``sigma = sigmoid(s + forget_bias)``,
    ``z' = sigma * z + (1 - sigma) * m`` with ``[m, s] = MADE(z)``; ``log |det dz'/dz| = sum log sigma``. A new step
    is ``z' = sigmoid(forget_bias) z`` (the MADE's output layer starts at zero)."""

    def __init__(self, dim: int, hidden_dims: Sequence[int], forget_bias: float = 1.5, context_dim: int = 0) -> None:
        super().__init__()
        self.made = MADE(dim, hidden_dims, context_dim)
        nn.init.zeros_(self.made.net[-1].weight)
        nn.init.zeros_(self.made.net[-1].bias)
        self.forget_bias = forget_bias

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The transformed codes ``[..., D]`` and ``log |det|`` per code ``[...]``."""
        m, s = self.made(z, context)
        log_sigma = F.logsigmoid(s + self.forget_bias)
        sigma = log_sigma.exp()
        return sigma * z + (1 - sigma) * m, log_sigma.sum(-1)


class InverseAutoregressiveFlow(nn.Module):
    """``num_steps`` :class:`IAFStep` of codes of ``dim``, each seeing the context, dimensions reversed in between."""

    def __init__(
        self, dim: int, num_steps: int, hidden_dims: Sequence[int], forget_bias: float = 1.5, context_dim: int = 0
    ) -> None:
        super().__init__()
        self.steps = nn.ModuleList(IAFStep(dim, hidden_dims, forget_bias, context_dim) for _ in range(num_steps))

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The flowed codes ``[..., D]`` and the summed ``log |det|`` of all steps ``[...]``."""
        log_det = torch.zeros(z.shape[:-1], device=z.device, dtype=z.dtype)
        for i, step in enumerate(self.steps):
            z, step_log_det = step(z.flip(-1) if i else z, context)
            log_det = log_det + step_log_det
        if len(self.steps) % 2 == 0:
            z = z.flip(-1)  # each dimension back in its place
        return z, log_det


__all__ = ["IAFStep", "InverseAutoregressiveFlow", "MADE", "MaskedLinear"]

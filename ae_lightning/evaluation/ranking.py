"""Top-k ranking metrics of recommenders per user (Liang et al. 2018, section 4.2), of ``scores [B, I]`` (items left
out of the ranking, such as a user's profile, at ``-inf``) and ``held_out [B, I]``, nonzero at the user's held-out
items; users without held-out items get NaN."""

from __future__ import annotations

import torch
from torch import Tensor


def _top_k_hits(scores: Tensor, held_out: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """``[B, k]``: whether the item at rank 1..k is held out, and ``[B]``: the most hits there can be,
    ``min(k, n_held_out)``; a ValueError unless both are ``[B, I]`` and k >= 1."""
    if k < 1:
        raise ValueError(f"k={k}: expected at least 1 (the number of top-ranked items scored)")
    if scores.ndim != 2 or scores.shape != held_out.shape:
        raise ValueError(
            f"scores {tuple(scores.shape)} and held_out {tuple(held_out.shape)}: expected both [users, items] (the "
            "held_out of InteractionsDataModule's (clicks, held_out, user) batches)"
        )
    top = scores.topk(min(k, scores.shape[-1]), dim=-1).indices
    return (held_out.gather(-1, top) > 0).float(), (held_out > 0).sum(-1).clamp(max=k)


def recall_at_k(scores: Tensor, held_out: Tensor, k: int) -> Tensor:
    """Recall@k over ``min(k, n_held_out)``, the most hits there can be: 1 is a perfect ranking."""
    hits, n_ideal = _top_k_hits(scores, held_out, k)
    return hits.sum(-1) / n_ideal.float().masked_fill(n_ideal == 0, float("nan"))


def ndcg_at_k(scores: Tensor, held_out: Tensor, k: int) -> Tensor:
    """NDCG@k with binary relevance: ``sum_r hit_r / log2(r + 1)`` over ranks r = 1..k, over the same sum for the
    ideal ranking (all ``min(k, n_held_out)`` held-out items first)."""
    hits, n_ideal = _top_k_hits(scores, held_out, k)
    discounts = 1.0 / torch.log2(torch.arange(2, hits.shape[-1] + 2, device=scores.device, dtype=torch.float32))
    idcg = discounts.cumsum(0)[(n_ideal - 1).clamp(min=0)]
    return (hits * discounts).sum(-1) / idcg.masked_fill(n_ideal == 0, float("nan"))


def ranking_metrics(scores: Tensor, held_out: Tensor) -> dict[str, Tensor]:
    """Per-user ``recall_20``, ``recall_50`` and ``ndcg_100``, the paper's three numbers."""
    return {
        "recall_20": recall_at_k(scores, held_out, 20),
        "recall_50": recall_at_k(scores, held_out, 50),
        "ndcg_100": ndcg_at_k(scores, held_out, 100),
    }


__all__ = ["ndcg_at_k", "ranking_metrics", "recall_at_k"]

"""Disentanglement metrics on data with known factors (dSprites), with scikit-learn, and latent traversal pictures.

The BetaVAE score (Higgins et al. 2017), the FactorVAE score (Kim & Mnih 2018), MIG (Chen et al. 2018), SAP (Kumar et
al. 2018) and DCI (Eastwood & Williams 2018), as in disentanglement_lib (Locatello et al. 2019) with smaller sample
sizes and random forests for DCI (docs/disentanglement.md). Factors are discrete (grid indices); those that do not vary
are left out; non-finite codes and unworkable settings are refused (:func:`check_disentanglement_settings`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from ae_lightning.evaluation.driver import check_known, evaluating
from datamodules.checks import AtLeastTwo, NonNegativeFloat, PositiveInt, check_arguments, number_type

DISENTANGLEMENT_METRICS: dict[str, str] = {
    "beta_vae": "BetaVAE score: accuracy of a linear classifier naming the fixed factor from mean code differences",
    "factor_vae": "FactorVAE score: accuracy of a majority vote naming the fixed factor from the least varying code",
    "mig": "mutual information gap: gap between the two codes most informative of a factor, over its entropy",
    "sap": "separated attribute predictability: gap between the two codes that best predict a factor alone",
    "dci": "DCI disentanglement, completeness and informativeness from random-forest feature importances",
}
Encoder = Callable[[Tensor], np.ndarray]
PRUNE_THRESHOLD = 0.05  # the FactorVAE score's default, disentanglement_lib's prune_dims.threshold
AtLeastTen = number_type("[10, inf)", integer=True)  # codes for MIG, SAP and DCI: SAP and DCI fit on 80%, score on 20%


class FactorSource(Protocol):
    """Data with known factors, as :class:`~datamodules.dsprites.DSpritesDataModule` offers them."""

    factor_names: Sequence[str]

    def sample_factors(self, n: int, generator: torch.Generator) -> Tensor:
        """``[n, K]`` grid indices of ``n`` random samples of the data."""

    def images_of(self, factors: Tensor) -> Tensor:
        """The images ``[n, C, H, W]`` of ``[n, K]`` grid indices."""


def model_encoder(model: nn.Module, batch_size: int = 512) -> Encoder:
    """A function from images to the model's codes ``[N, D]`` (float64 numpy, flattened), encoded in eval mode in
    batches; a ValueError for token indices (``discrete_codes``) or a conditional model (``num_classes``)."""
    name = type(model).__name__
    if getattr(model, "discrete_codes", False):
        raise ValueError(
            f"the disentanglement metrics score continuous codes, but {name}'s codes are token indices (names, not "
            "values: the metrics would bin and compare their numbers); score its tokenizer's codes instead"
        )
    if getattr(model, "num_classes", None) is not None:
        raise ValueError(
            f"the disentanglement metrics encode images alone, but {name} is conditional: its codes need each "
            f"image's label (num_classes={model.num_classes}), which the data's factors do not give it"
        )

    def encode(images: Tensor) -> np.ndarray:
        weight = next(model.parameters())  # its device, and dtype: float64 or bfloat16 under 64-true or bf16-true
        with evaluating(model, seed=None):
            parts = [model.encode(part.to(weight)).float().flatten(1).cpu() for part in images.split(batch_size)]
        return torch.cat(parts).double().numpy()

    return encode


def sample_codes(
    encode: Encoder, source: FactorSource, num_points: int, generator: torch.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Codes ``[num_points, D]`` and factors ``[num_points, K]`` of random samples of ``source``."""
    factors = source.sample_factors(num_points, generator)
    codes = finite_codes(np.concatenate([encode(source.images_of(part)) for part in factors.split(1024)]))
    return codes, factors.numpy()


def finite_codes(codes: np.ndarray) -> np.ndarray:
    """``codes [N, D]``, or a ValueError naming the dimensions that hold NaN or inf."""
    bad = np.flatnonzero(~np.isfinite(codes).all(0))
    if len(bad):
        raise ValueError(
            f"the codes are not finite (NaN or inf) in dimension(s) {bad.tolist()} of {codes.shape[1]} (a diverged "
            "model?): the disentanglement metrics need finite codes"
        )
    return codes


def varying(factors: np.ndarray) -> np.ndarray:
    """The columns of the factors ``[N, K]`` that take more than one value."""
    return np.array([len(np.unique(column)) > 1 for column in factors.T])


# --- scores of codes and factors ------------------------------------------------------------------------------------
def mutual_information_gap(codes: np.ndarray, factors: np.ndarray, bins: int = 20) -> float:
    """MIG of codes ``[N, D]`` (D >= 2) and discrete factors ``[N, K]``: ``mean_k (I(z_a; v_k) - I(z_b; v_k)) /
    H(v_k)``, ``z_a``, ``z_b`` the two code dimensions (in ``bins`` bins) most informative of factor ``v_k``."""
    from sklearn.metrics import mutual_info_score

    _check_gap_codes("mig", finite_codes(codes).shape[1])
    factors = factors[:, varying(factors)]
    binned = [np.digitize(z, np.histogram(z, bins)[1][:-1]) for z in codes.T]  # equal-width bins over each z's range
    information = np.array([[mutual_info_score(f, z) for f in factors.T] for z in binned])  # [D, K]
    entropy = np.array([mutual_info_score(f, f) for f in factors.T])
    top = np.sort(information, axis=0)[::-1]
    return float(np.mean((top[0] - top[1]) / entropy))


def separated_attribute_predictability(
    train_codes: np.ndarray, train_factors: np.ndarray, test_codes: np.ndarray, test_factors: np.ndarray
) -> float:
    """SAP of codes ``[N, D]`` (D >= 2) and discrete factors ``[N, K]``: the gap between the two best test accuracies
    of a linear SVM on one code dimension alone, averaged over the factors."""
    from sklearn.svm import LinearSVC

    _check_gap_codes("sap", finite_codes(np.concatenate([train_codes, test_codes])).shape[1])
    keep = varying(train_factors)
    train_factors, test_factors = train_factors[:, keep], test_factors[:, keep]
    accuracy = np.zeros((train_codes.shape[1], train_factors.shape[1]))
    for i in range(train_codes.shape[1]):
        for k in range(train_factors.shape[1]):
            classifier = LinearSVC(C=0.01, class_weight="balanced")
            classifier.fit(train_codes[:, i : i + 1], train_factors[:, k])
            accuracy[i, k] = classifier.score(test_codes[:, i : i + 1], test_factors[:, k])
    top = np.sort(accuracy, axis=0)[::-1]
    return float(np.mean(top[0] - top[1]))


def dci(
    train_codes: np.ndarray,
    train_factors: np.ndarray,
    test_codes: np.ndarray,
    test_factors: np.ndarray,
    seed: int = 0,
) -> dict[str, float]:
    """DCI of codes ``[N, D]`` and discrete factors ``[N, K]`` from the importances ``R [D, K]`` of one random forest
    per factor (``max_features=None``, seeded by ``seed``). ``dci_disentanglement``: ``sum_i rho_i (1 - H_K(P_i))``,
    ``P_i`` code ``i``'s row of ``R`` normalized, ``rho_i`` its share of the total; ``dci_completeness``: the same per
    factor over the codes (``H_D``); ``dci_informativeness``: the forests' mean test accuracy. D and C are 0 if no code
    has any importance; D is NaN with one varying factor, C with one code."""
    from scipy.stats import entropy
    from sklearn.ensemble import RandomForestClassifier

    finite_codes(np.concatenate([train_codes, test_codes]))  # the forests would take NaN as "missing", silently
    keep = varying(train_factors)
    train_factors, test_factors = train_factors[:, keep], test_factors[:, keep]
    num_codes, num_factors = train_codes.shape[1], train_factors.shape[1]
    importance, accuracies = np.zeros((num_codes, num_factors)), []
    # scikit-learn takes seeds 0 .. 2**32 - 1; the metrics take any int, as their torch generators do
    seeded = {"random_state": seed % 2**32, "n_jobs": 1}
    for k in range(num_factors):
        forest = RandomForestClassifier(n_estimators=30, max_depth=8, max_features=None, **seeded)
        forest.fit(train_codes, train_factors[:, k])
        importance[:, k] = forest.feature_importances_
        accuracies.append(forest.score(test_codes, test_factors[:, k]))
    total = importance.sum()
    share = importance / total if total > 0 else importance  # all 0 (e.g. constant codes): D and C are 0, not 0/0
    code_share, factor_share = share.sum(1), share.sum(0)
    weights = importance + 1e-11  # disentanglement_lib's: a code or factor of no importance is uniform, not 0/0
    per_code = 1 - entropy(weights, base=num_factors, axis=1) if num_factors > 1 else np.full(num_codes, np.nan)
    per_factor = 1 - entropy(weights, base=num_codes, axis=0) if num_codes > 1 else np.full(num_factors, np.nan)
    return {
        "dci_disentanglement": float(np.sum(code_share * per_code)),
        "dci_completeness": float(np.sum(factor_share * per_factor)),
        "dci_informativeness": float(np.mean(accuracies)),
    }


# --- scores that draw their own batches with one factor fixed -------------------------------------------------------
def beta_vae_score(
    encode: Encoder,
    source: FactorSource,
    generator: torch.Generator,
    batch_size: PositiveInt = 64,
    num_train: AtLeastTwo = 500,
    num_eval: PositiveInt = 300,
) -> float:
    """The BetaVAE score: a logistic regression's accuracy at naming the factor ``batch_size`` pairs share from
    their ``mean |z(x1) - z(x2)|``; ``num_train`` points fit it, ``num_eval`` score it, cycling the varying factors."""
    from sklearn.linear_model import LogisticRegression

    check_arguments(locals(), beta_vae_score)
    variable = _factors_to_name("beta_vae", source, generator)

    def points(n: int) -> tuple[np.ndarray, np.ndarray]:
        features, targets = [], []
        for i in range(n):
            factor = int(variable[i % len(variable)])
            first, second = source.sample_factors(batch_size, generator), source.sample_factors(batch_size, generator)
            second[:, factor] = first[:, factor]
            codes = finite_codes(encode(source.images_of(torch.cat([first, second]))))
            features.append(np.abs(codes[:batch_size] - codes[batch_size:]).mean(0))
            targets.append(factor)
        return np.stack(features), np.array(targets)

    train, test = points(num_train), points(num_eval)
    classifier = LogisticRegression(max_iter=2000).fit(*train)
    return float(classifier.score(*test))


def factor_vae_score(
    encode: Encoder,
    source: FactorSource,
    generator: torch.Generator,
    batch_size: AtLeastTwo = 64,
    num_train: PositiveInt = 500,
    num_eval: PositiveInt = 300,
    num_variance_estimate: AtLeastTwo = 5000,
    prune_threshold: NonNegativeFloat = PRUNE_THRESHOLD,
) -> float:
    """The FactorVAE score: each vote pairs the code dimension (scaled by its std over ``num_variance_estimate``
    samples) of least variance over ``batch_size`` samples sharing a random factor with that factor; each dimension
    predicts its most voted factor, fitted on ``num_train`` votes, scored on ``num_eval``. Dimensions of std below
    ``prune_threshold`` or zero take no part (none left: 0). Fewer than 2 varying factors are refused."""
    check_arguments(locals(), factor_vae_score)
    variable = _factors_to_name("factor_vae", source, generator)
    codes, _ = sample_codes(encode, source, num_variance_estimate, generator)
    scale = codes.std(0, ddof=1)
    active = (scale > 0) & (scale >= prune_threshold)
    if not active.any():
        return 0.0
    num_factors = len(source.factor_names)

    def votes(n: int) -> np.ndarray:
        counts = np.zeros((int(active.sum()), num_factors), dtype=np.int64)
        for _ in range(n):
            factor = int(variable[torch.randint(len(variable), (1,), generator=generator)])
            batch = source.sample_factors(batch_size, generator)
            batch[:, factor] = batch[0, factor]
            spread = (finite_codes(encode(source.images_of(batch)))[:, active] / scale[active]).var(0)
            counts[np.argmin(spread), factor] += 1
        return counts

    train, test = votes(num_train), votes(num_eval)
    predicted = train.argmax(1)
    return float(test[np.arange(len(test)), predicted].sum() / test.sum())


def _factors_to_name(metric: str, source: FactorSource, generator: torch.Generator) -> Tensor:
    """The indices of the factors that vary in ``source``; a ValueError unless there are >= 2 for ``metric`` to name."""
    variable = torch.from_numpy(np.flatnonzero(varying(source.sample_factors(512, generator).numpy())))
    varying_factors = [source.factor_names[k] for k in variable]
    if len(varying_factors) < 2:
        trivial = " (with one, every vote names it: a score of 1 whatever the codes)" if metric == "factor_vae" else ""
        raise ValueError(
            f"{metric} names the factor {'a pair of batches' if metric == 'beta_vae' else 'a batch'} shares, so it "
            f"needs >= 2 varying factors{trivial}; here only {', '.join(varying_factors) or 'none'} varies (the "
            "others are fixed, e.g. by the data's fixed_factors)"
        )
    return variable


def _check_gap_codes(metric: str, num_codes: int) -> None:
    """A ValueError unless ``metric`` (``mig`` or ``sap``) has two code dimensions."""
    if num_codes < 2:
        best = "most informative" if metric == "mig" else "most predictive"
        raise ValueError(f"{metric.upper()} compares the two {best} code dimensions: it needs >= 2, got {num_codes}")


# --- all of them ----------------------------------------------------------------------------------------------------
def check_disentanglement_metrics(names: Sequence[str]) -> list[str]:
    """``names`` as a list, or a ValueError for a string or naming each unknown one and listing the known ones."""
    if isinstance(names, str):
        raise ValueError(
            f"metrics must be a list of disentanglement metric names, e.g. [{names!r}], got the string {names!r}"
        )
    return check_known(names, DISENTANGLEMENT_METRICS, "disentanglement metric", "they are")


def check_disentanglement_settings(
    encode: Encoder, source: FactorSource, metrics: Sequence[str], num_votes: int = 500
) -> list[str]:
    """``metrics`` as a list, or a ValueError before any runs: unknown names, no varying factor, < 2 varying factors or
    ``num_votes`` (``beta_vae``), < 2 code dimensions (``mig``, ``sap``), non-finite codes."""
    metrics = check_disentanglement_metrics(metrics)
    if not metrics:
        return metrics
    probe = source.sample_factors(512, torch.Generator().manual_seed(0))
    if not varying(probe.numpy()).any():
        raise ValueError("no factor of the data varies (all are fixed, e.g. by its fixed_factors): the disentanglement "
                         f"metrics {', '.join(metrics)} have nothing to measure")  # fmt: skip
    for metric in ("beta_vae", "factor_vae"):
        if metric in metrics:
            _factors_to_name(metric, source, torch.Generator().manual_seed(0))
    if "beta_vae" in metrics and num_votes < 2:
        raise ValueError(f"beta_vae needs num_votes >= 2 (its classifier must see two factors), got {num_votes}")
    num_codes = finite_codes(encode(source.images_of(probe[:1]))).shape[1]
    for metric in ("mig", "sap"):
        if metric in metrics:
            _check_gap_codes(metric, num_codes)
    return metrics


def disentanglement_metrics(
    encode: Encoder,
    source: FactorSource,
    metrics: Sequence[str] = tuple(DISENTANGLEMENT_METRICS),
    num_points: AtLeastTen = 10000,
    num_votes: PositiveInt = 500,
    seed: int = 0,
    prune_threshold: NonNegativeFloat = PRUNE_THRESHOLD,
) -> dict[str, float]:
    """The named :data:`DISENTANGLEMENT_METRICS` (``dci`` gives three) of the codes ``encode`` (:func:`model_encoder`)
    gives ``source``'s data: MIG, SAP and DCI of ``num_points`` samples (SAP and DCI fit on 80%, score on 20%), the
    BetaVAE and FactorVAE scores fit on ``num_votes`` points, scored on 60% as many. Each score has its own generator
    seeded by ``seed`` (MIG, SAP and DCI share one): its value does not depend on the others asked for."""
    check_arguments(locals(), disentanglement_metrics)
    check_seed(seed)
    metrics = check_disentanglement_settings(encode, source, metrics, num_votes)
    results: dict[str, float] = {}
    if {"mig", "sap", "dci"} & set(metrics):
        codes, factors = sample_codes(encode, source, num_points, torch.Generator().manual_seed(seed))
        split = int(0.8 * num_points)
        fit_and_score = (codes[:split], factors[:split], codes[split:], factors[split:])
        if "mig" in metrics:
            results["mig"] = mutual_information_gap(codes, factors)
        if "sap" in metrics:
            results["sap"] = separated_attribute_predictability(*fit_and_score)
        if "dci" in metrics:
            results |= dci(*fit_and_score, seed)
    votes = {"num_train": num_votes, "num_eval": max(1, round(0.6 * num_votes))}
    if "beta_vae" in metrics:
        results["beta_vae"] = beta_vae_score(encode, source, _metric_generator(seed, "beta_vae"), **votes)
    if "factor_vae" in metrics:
        generator = _metric_generator(seed, "factor_vae")
        results["factor_vae"] = factor_vae_score(encode, source, generator, **votes, prune_threshold=prune_threshold)
    return results


def check_seed(seed: Any) -> None:
    """A ValueError unless ``seed`` is an integer that a torch generator takes, in ``[-2**63, 2**64 - 1]``."""
    try:
        torch.Generator().manual_seed(seed)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"seed must be an integer in [-2**63, 2**64 - 1] (torch's), got {seed!r}") from None


def _metric_generator(seed: int, name: str) -> torch.Generator:
    """A generator of metric ``name``'s own draws, seeded from ``seed`` and the metric."""
    index = list(DISENTANGLEMENT_METRICS).index(name)
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed % 2**64, index]).generate_state(1)[0]))


# --- pictures -------------------------------------------------------------------------------------------------------
def has_flat_codes(model: nn.Module) -> bool:
    """Whether ``model``'s codes are continuous vectors ``[latent_dim]`` (:func:`latent_traversals` sweeps those)."""
    return len(getattr(model, "latent_shape", (0,))) == 1 and not getattr(model, "discrete_codes", False)


def latent_traversals(model: nn.Module, images: Tensor, span: float = 2.5, steps: int = 9) -> Tensor:
    """A picture ``[3, H', W']`` in [0, 1]: a row per dimension of each image's flat code (:func:`has_flat_codes`)
    swept over ``[-span, span]`` (prior standard deviations for the VAEs) in ``steps`` steps, decoded."""
    from torchvision.utils import make_grid

    weight = next(model.parameters())
    with evaluating(model, seed=None):
        codes = model.encode(images.to(weight))
        if codes.dim() != 2:
            raise ValueError(f"latent traversals sweep each dimension of flat codes [latent_dim]; "
                             f"{type(model).__name__}'s codes have shape {list(codes.shape[1:])}")  # fmt: skip
        values = torch.linspace(-span, span, steps, device=weight.device)
        rows = []
        for code in codes:
            for dim in range(len(code)):
                swept = code.repeat(steps, 1)
                swept[:, dim] = values
                rows.append(model.decode(swept).float().cpu())
    grid = make_grid(torch.cat(rows), nrow=steps, pad_value=0.5)
    return grid.expand(3, -1, -1) if grid.shape[0] == 1 else grid


__all__ = [
    "DISENTANGLEMENT_METRICS",
    "PRUNE_THRESHOLD",
    "FactorSource",
    "beta_vae_score",
    "check_disentanglement_metrics",
    "check_disentanglement_settings",
    "dci",
    "disentanglement_metrics",
    "factor_vae_score",
    "finite_codes",
    "latent_traversals",
    "model_encoder",
    "mutual_information_gap",
    "sample_codes",
    "separated_attribute_predictability",
]

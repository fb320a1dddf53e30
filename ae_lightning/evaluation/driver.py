"""Evaluation of trained autoencoders: reconstruction, likelihood, sample quality, representation, anomaly detection,
from torchmetrics and scikit-learn; :func:`evaluate` computes any of :data:`METRICS` for a model and its data."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from pathlib import Path
from pkgutil import resolve_name
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.functional.classification import binary_auroc
from tqdm.auto import tqdm

from ae_lightning.base import AutoencoderModule
from ae_lightning.evaluation.metrics import (
    FrechetDistance,
    InceptionFeatures,
    ReconstructionMetrics,
    ms_ssim_applies,
    multiscale_ssim,
)
from ae_lightning.training.fault_tolerance.checkpoint_io import read_checkpoint
from datamodules.base import ImageDataModule, Split
from datamodules.checks import AtLeastTwo, PositiveInt, check_arguments, init_parameters
from datamodules.loader import Batch, TensorBatchLoader

METRICS: dict[str, str] = {
    "mse": "mean squared error of the test reconstructions, per pixel",
    "bce": "binary cross-entropy of the test reconstructions, per pixel, in nats",
    "psnr": "peak signal-to-noise ratio of the test reconstructions, dB, averaged over images (each at most 100 dB)",
    "ssim": "structural similarity of the test reconstructions",
    "nll": "importance-weighted bound on -log p(x) of the test images, nats per image (VAE family)",
    "fid": "Frechet distance between test images (of the trained classes) and prior samples in a dataset "
    "classifier's features (generative models)",
    "linear_probe": "test accuracy of logistic regression fitted on the codes of the training images (test images of "
    "the trained classes)",
    "knn": "test accuracy of k-nearest neighbours on the codes of the training images (test images of the trained "
    "classes)",
    "auroc": "AUROC of the anomaly score separating held-out classes from the trained ones (test images; model "
    "trained with data classes = all but the held-out ones)",
}
RECONSTRUCTION_METRICS = ("mse", "bce", "psnr", "ssim")
# The metrics of image tokenizers and codecs, computed by :func:`first_stage_scores` (``scripts/evaluate.py`` adds
# those that apply; ``lpips``, ``rfid`` and ``rfid_classifier`` only when asked: they need pretrained weights).
FIRST_STAGE_METRICS: dict[str, str] = {
    "ms_ssim": "multi-scale SSIM of the test reconstructions, with the scales the image size allows",
    "lpips": "LPIPS (AlexNet) distance of the test reconstructions; needs torchvision's AlexNet weights",
    "rfid": "reconstruction FID: Frechet distance between the test images and their reconstructions in Inception-v3 "
    "features; needs torchvision's Inception weights (not comparable with published FIDs, computed in TensorFlow's)",
    "rfid_classifier": "the same distance in the dataset classifier's features (scripts/train_feature_classifier.py)",
    "codes_used": "share of the codebook the test images' codes use (quantized models)",
    "perplexity": "perplexity of the test images' code frequencies (quantized models)",
    "dead_codes": "codes no test image uses (quantized models)",
    "bpp": "bits per pixel of the test images' codes: their information under the prior (CodePrior), else the "
    "fixed-length rate (quantized models)",
}
PERCEPTUAL_METRICS = ("ms_ssim", "lpips")
FRECHET_METRICS = ("rfid", "rfid_classifier")
CODE_METRICS = ("codes_used", "perplexity", "dead_codes", "bpp")
IMAGE_METRICS = ("bce", "psnr", "ssim", "fid", *PERCEPTUAL_METRICS, *FRECHET_METRICS)


def check_known(names: Sequence[str], known: Collection[str], kind: str, listing: str) -> list[str]:
    """``names`` as a list, or a ValueError ``unknown <kind> <names not in known>; <listing> <known>``."""
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"unknown {kind} {', '.join(map(repr, unknown))}; {listing} {', '.join(known)}")
    return list(names)


def check_metric_names(names: Sequence[str]) -> list[str]:
    """``names`` as a list, or a ValueError naming each unknown metric and listing the known ones."""
    return check_known(names, METRICS, "metric", "the metrics are")


def metric_applies(model: AutoencoderModule, datamodule: ImageDataModule, name: str) -> bool:
    """Whether metric ``name`` can be computed for this model and data (else :func:`evaluate` raises)."""
    return not_applicable(model, datamodule, name) is None


def not_applicable(model: AutoencoderModule, datamodule: ImageDataModule, name: str) -> str | None:
    """Why metric ``name`` cannot be computed for this model and data (the data's reason first); None where it can."""
    description, shape = {**METRICS, **FIRST_STAGE_METRICS}[name], tuple(datamodule.input_shape)
    if name in IMAGE_METRICS and len(shape) != 3:
        if name == "fid":
            return f"fid compares images, but the data are feature vectors of shape {datamodule.input_shape}"
        return f"metric {name!r} needs images, but the data are feature vectors of shape {shape}: {description}"
    if name == "ms_ssim" and not ms_ssim_applies(shape[1:]):
        size = "x".join(map(str, shape[1:]))
        return f"metric 'ms_ssim' needs images of at least 11 pixels a side, these are {size}: {description}"
    classes = datamodule.hparams.classes if name in ("linear_probe", "knn", "auroc") else None
    if name in ("linear_probe", "knn") and not (datamodule.has_labels and len(labels := _labels(datamodule)) > 1):
        data = type(datamodule).__name__
        why = "has no labels" if not datamodule.has_labels else f"keeps one (classes={classes})" if classes else ""
        why = why or f"holds one ({labels[0]})"
        return f"metric {name!r} needs labelled data of at least two classes, but {data} {why}: {description}"
    if name == "auroc" and classes is None:
        return (
            "auroc follows the one-class-held-out protocol: it needs a model trained with data classes = all "
            "but the held-out ones, and this datamodule keeps every class"
        )
    model_has = {
        "nll": callable(getattr(model, "importance_weighted_nll", None)),
        "fid": getattr(model, "is_generative", False),
        **dict.fromkeys(CODE_METRICS, quantizer_of(model) is not None),
    }
    if not model_has.get(name, True):
        return f"metric {name!r} does not apply to {type(model).__name__}: {description}"
    return None


def _labels(datamodule: ImageDataModule) -> list:
    """The classes a model of ``datamodule`` learns: those it keeps, its class names, or its distinct labels."""
    if datamodule.hparams.classes is not None:
        return list(datamodule.hparams.classes)
    if datamodule.class_names is not None:
        return list(datamodule.class_names)
    return datamodule.arrays.train[1].unique().tolist()


def check_applicable(model: AutoencoderModule, datamodule: ImageDataModule, names: Sequence[str]) -> None:
    """Raise a ValueError saying why (:func:`not_applicable`) for the first of ``names`` that does not apply."""
    for name in names:
        if (why := not_applicable(model, datamodule, name)) is not None:
            raise ValueError(why)


def require_generative(model: nn.Module, purpose: str) -> None:
    """Raise a ValueError naming the model if it cannot ``sample`` (it is not ``is_generative``)."""
    if not getattr(model, "is_generative", False):
        raise ValueError(
            f"{purpose} needs a generative model, but {type(model).__name__} is not one (is_generative = False): it "
            "has no prior to sample from. Use a checkpoint of a generative variant such as the VAE."
        )


def images_at_once(image_shape: Sequence[int]) -> int:
    """Images of ``image_shape`` evaluated at once: 500 up to 64x64 gray, fewer above, down to 10 of 3x256x256."""
    return max(1, min(500, 2**21 // math.prod(image_shape)))


def split_loader(
    datamodule: ImageDataModule,
    split: Split,
    batch_size: PositiveInt | None = None,
    max_images: PositiveInt | None = None,
    seed: int = 0,
    binarize: bool = True,
) -> TensorBatchLoader:
    """The split's images in stored order, binarized as the datamodule's test images, the same on every pass (a
    ``dynamic`` binarization is not redrawn). ``max_images``: a random subset seeded by ``seed`` (None: all);
    ``binarize=False``: a ``dynamic`` datamodule's gray images; ``batch_size`` None: the datamodule's."""
    check_arguments(locals(), split_loader)
    own = getattr(datamodule, "evaluation_loader", None)
    if own is not None:  # images drawn when their batch is built (dSprites)
        return own(split, batch_size=batch_size, max_images=max_images, seed=seed)
    datamodule.setup()
    images, labels = datamodule.splits[split]
    rows = datamodule.evaluation_rows(split, max_images, seed)
    return TensorBatchLoader(
        images[rows],
        labels[rows],
        rows,
        batch_size=datamodule.hparams.batch_size if batch_size is None else batch_size,
        shuffle=False,
        seed=datamodule.hparams.seed,
        binarize=binarize and datamodule.hparams.binarize == "dynamic",
        resumable=False,
    )


def first_images(datamodule: ImageDataModule, split: Split, count: PositiveInt) -> tuple[Tensor, Tensor]:
    """The first ``count`` images ``[count, C, H, W]`` of the split (as :func:`split_loader` yields them) and labels."""
    check_arguments(locals(), first_images)
    images, labels, _ = next(iter(split_loader(datamodule, split, batch_size=count)))
    return images, labels


@contextlib.contextmanager
def evaluating(model: nn.Module, seed: int | None = 0) -> Iterator[None]:
    """Eval mode without gradients, seeded, restoring the mode and the global random state afterwards."""
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if seed is not None:
                torch.manual_seed(seed)
            yield
    finally:
        model.train(was_training)


def _batches(loader: TensorBatchLoader, to: nn.Module | torch.device) -> Iterator[tuple[Tensor, Tensor]]:
    """The loader's images and labels on device ``to``, or on model ``to``'s device in its weights' dtype."""
    weight = next(to.parameters()) if isinstance(to, nn.Module) else torch.empty(0, device=to)
    for x, labels, _ in tqdm(loader, desc="evaluating", unit="batch", leave=False, file=sys.stderr):
        yield x.to(weight), labels.to(weight.device)


def reconstruction_scores(model: AutoencoderModule, loader: TensorBatchLoader, seed: int = 0) -> dict[str, float]:
    """:data:`RECONSTRUCTION_METRICS` of the model's reconstructions of the loader's images (vectors: ``mse``)."""
    metrics = ReconstructionMetrics(images=len(model.input_shape) == 3).to(model.device)
    with evaluating(model, seed):
        for x, labels in _batches(loader, model):
            metrics.update(model(x, labels).float(), x)
    values = {name.removeprefix("recon_"): float(value) for name, value in metrics.compute().items()}
    return {name: values[name] for name in RECONSTRUCTION_METRICS if name in values}


def perceptual_scores(
    model: AutoencoderModule,
    loader: TensorBatchLoader,
    names: Sequence[str],
    seed: int = 0,
    distance: nn.Module | None = None,
) -> dict[str, float]:
    """``ms_ssim`` and ``lpips`` (of ``names``) of the reconstructions; ``distance``: LPIPS (None: pretrained)."""
    metrics: dict[str, Any] = {}
    if "ms_ssim" in names:
        metrics["ms_ssim"] = multiscale_ssim(model.input_shape[1:]).to(model.device)
    if "lpips" in names:
        distance = (pretrained_networks(["lpips"])["lpips"] if distance is None else distance).to(model.device)
        metrics["lpips"] = MeanMetric().to(model.device)
    with evaluating(model, seed):
        for x, labels in _batches(loader, model):
            reconstruction = model(x, labels).float()
            if "ms_ssim" in metrics:
                metrics["ms_ssim"].update(reconstruction, x.float())
            if "lpips" in metrics:
                metrics["lpips"].update(distance(reconstruction, x.float()))
    return {name: float(metric.compute()) for name, metric in metrics.items()}


def quantizer_of(model: nn.Module) -> nn.Module | None:
    """The quantized autoencoder behind ``model`` (itself, or a prior's tokenizer); None for other models."""
    tokenizer = getattr(model, "tokenizer", model)
    return tokenizer if callable(getattr(tokenizer, "encode_indices", None)) else None


def code_scores(model: AutoencoderModule, loader: TensorBatchLoader, seed: int = 0) -> dict[str, float]:
    """Codebook usage of the loader's codes (``codes_used``, ``perplexity``, ``dead_codes``) and their ``bpp``: under
    the prior for a :class:`~ae_lightning.models.prior.CodePrior`, else the fixed-length rate."""
    from ae_lightning.blocks.quantizers import CodebookUsage

    tokenizer = quantizer_of(model)
    usage = CodebookUsage(tokenizer.codebook_size, tokenizer.quantizer.num_codebooks).to(model.device)
    bits = MeanMetric().to(model.device)
    pixels = model.input_shape[1] * model.input_shape[2]
    with evaluating(model, seed):
        for x, _ in _batches(loader, model):
            indices = tokenizer.encode_indices(x)
            usage.update(indices)
            if callable(getattr(model, "bits_per_image", None)):
                bits.update(model.bits_per_image(x) / pixels)
            else:
                bits.update(torch.full((len(x),), tokenizer.bits_per_pixel(indices.shape[1:]), device=x.device))
    return {**{name: float(value) for name, value in usage.compute().items()}, "bpp": float(bits.compute())}


def reconstruction_frechet_distance(
    model: AutoencoderModule, network: nn.Module, loader: TensorBatchLoader, seed: int = 0
) -> float:
    """Frechet distance between the loader's images and their reconstructions in ``network``'s features."""
    metric = FrechetDistance(network).to(model.device)
    with evaluating(model, seed):
        for x, labels in _batches(loader, model):
            metric.update(x.float(), real=True)
            metric.update(model(x, labels).float(), real=False)
    return float(metric.compute())


def check_first_stage_metrics(model: AutoencoderModule, datamodule: ImageDataModule, names: Sequence[str]) -> None:
    """A ValueError naming a name of ``names`` not in :data:`FIRST_STAGE_METRICS` or not applying to model and data."""
    check_applicable(model, datamodule, check_known(names, FIRST_STAGE_METRICS, "metric", "these are"))


def pretrained_networks(names: Sequence[str]) -> dict[str, nn.Module]:
    """The pretrained networks of the metrics ``names`` that need one: ``rfid``'s Inception features and ``lpips``'s
    LPIPS (AlexNet); loaded first, missing weights (offline) are an error before any score is computed."""
    from ae_lightning.blocks.perceptual import LPIPSDistance

    factories = {"rfid": InceptionFeatures, "lpips": lambda: LPIPSDistance("alex")}
    return {name: factory() for name, factory in factories.items() if name in names}


def first_stage_scores(
    model: AutoencoderModule,
    datamodule: ImageDataModule,
    names: Sequence[str],
    *,
    classifier: nn.Module | None = None,
    pretrained: dict[str, nn.Module] | None = None,
    frechet_images: AtLeastTwo | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """The :data:`FIRST_STAGE_METRICS` ``names`` of the model on the test split; a ValueError naming one that does not
    apply. ``pretrained``: :func:`pretrained_networks` of ``names`` when None; the ``rfid`` pair sees at most
    ``frechet_images`` test images (None: all), a subset seeded by ``seed``."""
    check_arguments(locals(), first_stage_scores)
    check_first_stage_metrics(model, datamodule, names)
    if "rfid_classifier" in names and classifier is None:
        raise ValueError("rfid_classifier needs the feature classifier (classifier=...)")
    pretrained = pretrained_networks(names) if pretrained is None else pretrained
    test = split_loader(datamodule, "test")
    results: dict[str, float] = {}
    if any(name in PERCEPTUAL_METRICS for name in names):
        results |= perceptual_scores(model, test, names, seed, pretrained.get("lpips"))
    if any(name in CODE_METRICS for name in names):
        results |= code_scores(model, test, seed)
    frechet = [name for name in FRECHET_METRICS if name in names]
    subset = split_loader(datamodule, "test", max_images=frechet_images, seed=seed) if frechet else None
    for name in frechet:
        network = pretrained["rfid"] if name == "rfid" else classifier
        results[name] = reconstruction_frechet_distance(model, network.to(model.device), subset, seed)
    return {name: results[name] for name in names}


def negative_log_likelihood(
    model: AutoencoderModule, loader: TensorBatchLoader, num_samples: int | None, seed: int = 0
) -> float:
    """Mean importance-weighted bound on -log p(x), nats per image, of ``num_samples`` samples (None: the model's)."""
    nll, _ = _per_image(lambda x, y: model.importance_weighted_nll(x, num_samples, y), model, loader, seed)
    return float(nll.double().mean())


def encode_split(model: AutoencoderModule, loader: TensorBatchLoader, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Codes ``[N, latent_dim]`` (spatial codes flattened) and labels ``[N]`` of the loader's images, on the CPU."""
    codes, labels = _per_image(model.encode, model, loader, seed)
    return codes.flatten(1), labels


def _per_image(method: Callable, model: nn.Module, loader: TensorBatchLoader, seed: int) -> tuple[Tensor, Tensor]:
    """``method(x, y)`` of every batch of the loader and the labels, concatenated on the CPU."""
    values, labels = [], []
    with evaluating(model, seed):
        for x, y in _batches(loader, model):
            values.append(method(x, y).float().cpu())
            labels.append(y.cpu())
    return torch.cat(values), torch.cat(labels)


def probe_accuracies(
    train_codes: Tensor,
    train_labels: Tensor,
    test_codes: Tensor,
    test_labels: Tensor,
    neighbors: int = 5,
) -> dict[str, float]:
    """Test accuracy of a linear probe (``LogisticRegression``, standardized codes) and of k-NN (Euclidean, raw codes,
    k = ``neighbors``), fitted on the training codes ``[N, D]``, scored on the test codes ``[M, D]``."""
    from sklearn.linear_model import LogisticRegression  # here: slow to import, and training callbacks import us
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_train, y_train = train_codes.double().numpy(), train_labels.numpy()
    x_test, y_test = test_codes.double().numpy(), test_labels.numpy()
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    knn = KNeighborsClassifier(n_neighbors=min(neighbors, len(x_train)))
    return {
        "linear_probe": float(probe.fit(x_train, y_train).score(x_test, y_test)),
        "knn": float(knn.fit(x_train, y_train).score(x_test, y_test)),
    }


def frechet_distance(
    model: AutoencoderModule,
    classifier: nn.Module,
    real: TensorBatchLoader,
    num_samples: int = 10000,
    batch_size: int | None = None,
    seed: int = 0,
) -> float:
    """Frechet distance between the real images and ``num_samples`` prior samples, ``batch_size`` at once (None:
    :func:`images_at_once`), in the classifier's features; a conditional model samples the real labels in turn."""
    require_generative(model, "the Frechet distance of samples (fid)")
    metric, shape, labels = FrechetDistance(classifier).to(model.device), (), []
    with torch.no_grad():
        for x, y in _batches(real, model.device):
            metric.update(x, real=True)
            shape = x.shape[1:]
            labels.append(y)
    batch_size = images_at_once(shape) if batch_size is None else batch_size
    order = torch.cat(labels) if getattr(model, "num_classes", None) else None
    with evaluating(model, seed):
        for chunk in torch.arange(num_samples, device=model.device).split(batch_size):
            y = None if order is None else order[chunk % len(order)]
            metric.update(model.sample(len(chunk), y).float(), real=False)
    return float(metric.compute())


def real_frechet_distance(classifier: nn.Module, first: TensorBatchLoader, second: TensorBatchLoader) -> float:
    """Frechet distance between two sets of real images (e.g. train and test): the floor a model can reach."""
    device = next(classifier.parameters()).device
    metric = FrechetDistance(classifier).to(device)
    with torch.no_grad():
        for loader, real in ((first, True), (second, False)):
            for x, _ in _batches(loader, device):
                metric.update(x, real=real)
    return float(metric.compute())


def anomaly_scores(model: AutoencoderModule, loader: TensorBatchLoader, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Per-image ``model.anomaly_score`` ``[N]`` (higher = more anomalous) and labels ``[N]``, on the CPU."""
    return _per_image(model.anomaly_score, model, loader, seed)


def anomaly_auroc(scores: Tensor, labels: Tensor, normal_classes: Sequence[int]) -> float:
    """AUROC of ``scores`` telling images of classes outside ``normal_classes`` (the anomalies) from the rest: the
    chance that an anomaly scores higher than a normal image, ties counting half; a NaN score is a ValueError."""
    is_anomaly = ~torch.isin(labels, torch.as_tensor(list(normal_classes), dtype=labels.dtype))
    if is_anomaly.all() or not is_anomaly.any():
        raise ValueError("AUROC needs both normal and anomalous images among the labels")
    if nan := int(scores.isnan().sum()):
        raise ValueError(f"{nan} of {len(scores)} anomaly scores are NaN: the model's anomaly_score has no order there")
    # torchmetrics reads scores outside [0, 1] as logits and squashes them with a sigmoid, which saturates scores such
    # as a negative ELBO of hundreds of nats into ties; ranks keep the order and the ties, and AUROC needs no more.
    ranks = torch.unique(scores, return_inverse=True)[1].double()
    return float(binary_auroc(ranks / ranks.max().clamp_min(1), is_anomaly.long()))


def evaluate(
    model: AutoencoderModule,
    datamodule: ImageDataModule,
    metrics: Sequence[str] = tuple(METRICS),
    *,
    classifier: nn.Module | None = None,
    nll_samples: PositiveInt | None = None,
    fid_samples: AtLeastTwo = 10000,
    probe_max_train: AtLeastTwo | None = None,
    knn_neighbors: PositiveInt = 5,
    seed: int = 0,
) -> dict[str, float]:
    """The named :data:`METRICS` of a trained model on its datamodule's test split, probes fit on the training split. A
    model trained on some classes (``data.classes``) has its probes and ``fid`` scored on their test images only, the
    other metrics on every test image. ``fid`` needs a ``classifier`` (``load_feature_classifier(path).network``);
    ``nll_samples`` None: the model's; ``probe_max_train``: fit the probes on a seeded subset of at most this many
    training images (None: all; a subset of one class is refused before any score)."""
    check_arguments(locals(), evaluate)
    metrics = check_metric_names(metrics)
    if "fid" in metrics:  # the model before the data
        require_generative(model, "the Frechet distance of samples (fid)")
    check_applicable(model, datamodule, metrics)
    if "fid" in metrics and classifier is None:
        raise ValueError("fid needs the feature classifier (classifier=...)")
    test = split_loader(datamodule, "test")
    results: dict[str, float] = {}
    if "linear_probe" in metrics or "knn" in metrics:  # first: training codes of one class are refused before any score
        train = split_loader(datamodule, "train", max_images=probe_max_train, seed=seed)
        train_codes, train_labels = encode_split(model, train, seed)
        if len(classes := train_labels.unique()) < 2:
            raise ValueError(
                f"the probes need training images of >= 2 classes, but the {len(train_labels)} drawn "
                f"(probe_max_train={probe_max_train}, seed={seed}) are all of class {classes.tolist()[0]}: raise "
                "probe_max_train or change the seed"
            )
        test_codes, test_labels = encode_split(model, test, seed)
        if datamodule.hparams.classes is not None:  # the probes learnt the trained classes only
            trained = torch.isin(test_labels, torch.as_tensor(datamodule.hparams.classes, dtype=test_labels.dtype))
            test_codes, test_labels = test_codes[trained], test_labels[trained]
        results |= probe_accuracies(train_codes, train_labels, test_codes, test_labels, knn_neighbors)
    if any(name in RECONSTRUCTION_METRICS for name in metrics):
        results |= reconstruction_scores(model, test, seed)
    if "nll" in metrics:
        results["nll"] = negative_log_likelihood(model, test, nll_samples, seed)
    if "fid" in metrics:
        real = gray_loader(datamodule, "test", datamodule.hparams.classes)
        results["fid"] = frechet_distance(model, classifier.to(model.device), real, fid_samples, seed=seed)
    if "auroc" in metrics:
        scores, labels = anomaly_scores(model, test, seed)
        results["auroc"] = anomaly_auroc(scores, labels, datamodule.hparams.classes)
    return {name: results[name] for name in metrics}


def gray_loader(datamodule: ImageDataModule, split: Split, classes: Sequence[int] | None = None) -> Iterable[Batch]:
    """The split's gray-level images (never binarized), only those of ``classes`` where given."""
    if datamodule.hparams.get("binarize") == "static" and not hasattr(datamodule, "evaluation_loader"):
        # its splits hold the binarized images: the same rows, gray, from every argument it was built with
        accepted = init_parameters(type(datamodule))
        settings = {name: value for name, value in datamodule.hparams.items() if name in accepted}
        datamodule = type(datamodule)(**{**settings, "binarize": "none"})
    loader = split_loader(datamodule, split, batch_size=500, binarize=False)
    return loader if classes is None else _ImagesOfClasses(loader, classes)


class _ImagesOfClasses:
    """The batches of ``loader`` cut to the images whose label is one of ``classes`` (each pass, as the loader's)."""

    def __init__(self, loader: Iterable[Batch], classes: Sequence[int]) -> None:
        self.loader, self.classes = loader, torch.as_tensor(list(classes))

    def __iter__(self) -> Iterator[Batch]:
        for x, labels, indices in self.loader:
            keep = torch.isin(labels, self.classes.to(labels.dtype))
            if keep.any():
                yield x[keep], labels[keep], indices[keep]


def datamodule_names() -> list[str]:
    """The names of the datamodules of the ``datamodules`` package (not their bases)."""
    import datamodules

    bases = ("ImageDataModule", "IDXDataModule")
    return [name for name in datamodules.__all__ if name.endswith("DataModule") and name not in bases]


def datamodule_class(name: str) -> type[ImageDataModule]:
    """The datamodule class named ``name``: a class of the ``datamodules`` package, or an import path."""
    import datamodules

    try:
        found = resolve_name(name) if "." in name else getattr(datamodules, name, None)
    except (ImportError, AttributeError, ValueError):  # no such module or class, or not a path
        found = None
    if not (isinstance(found, type) and issubclass(found, ImageDataModule)):
        known = ", ".join(datamodule_names())
        raise ValueError(f"unknown datamodule {name!r}; the datamodules are {known} (or an import path)")
    return found


def load_checkpoint(
    path: str | Path, /, data_dir: str | Path | None = None, **data_overrides: Any
) -> tuple[AutoencoderModule, ImageDataModule]:
    """A model and its datamodule, rebuilt from a checkpoint of ``ae-lightning fit``; a ValueError if the datamodule
    would read other data than the run recorded (:func:`check_data_source`). ``data_dir``: where the data are now
    (None: the checkpoint's); ``data_overrides``: other datamodule arguments (``batch_size``, or a datamodule's
    ``path``: hence the checkpoint's ``path`` is positional only)."""
    checkpoint = read_checkpoint(path, name="checkpoint")
    class_path = checkpoint.get("ae_lightning_class") or checkpoint.get("hyper_parameters", {}).get("_class_path")
    if class_path is None:
        raise ValueError(f"{path} is not an ae-lightning checkpoint: it names no model class")
    data_hparams = dict(checkpoint.get("datamodule_hyper_parameters") or {})
    data_class_path = data_hparams.pop("_class_path", None)
    if data_class_path is None:
        raise ValueError(f"{path} does not record its datamodule (trained without LightningCLI?)")
    data_hparams.pop("_instantiator", None)
    recorded_source = data_hparams.pop("data_source", None)
    data_class, run_data_dir = _run_class(path, data_class_path, "datamodule"), data_hparams.get("data_dir")
    if data_dir is not None:
        if "data_dir" not in data_hparams:
            raise ValueError(_no_data_dir(data_class, data_hparams, data_dir))
        data_hparams["data_dir"] = str(data_dir)
    data_hparams |= data_overrides
    datamodule = data_class(**data_hparams)  # first: it checks the data before the model loads
    check_data_source(path, recorded_source, datamodule, run_data_dir)
    return _run_class(path, class_path, "model").load_from_checkpoint(path, map_location="cpu"), datamodule


def _run_class(path: str | Path, class_path: str, role: str) -> type:
    """The class ``class_path`` that checkpoint ``path`` records for its ``role``; a ValueError naming both and the fix
    if it cannot be imported here (a module of one's own, outside the Python path)."""
    try:
        return resolve_name(class_path)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(
            f"{path} was trained with the {role} {class_path}, which cannot be imported here ({type(error).__name__}: "
            f"{error}): run from the folder that holds its module, or add that folder to PYTHONPATH"
        ) from error


def check_data_source(
    path: str | Path, recorded: str | None, datamodule: ImageDataModule, run_data_dir: str | None = None
) -> None:
    """A ValueError naming both if ``datamodule.data_source`` differs from ``recorded``, checkpoint ``path``'s (None:
    no check); a ``files-`` source names where files are, not what they hold: moved files pass."""
    current = datamodule.data_source
    if recorded is None or current == recorded or (current.startswith("files-") and recorded.startswith("files-")):
        return
    if "data_dir" in datamodule.hparams:
        where = f"data_dir={datamodule.hparams.data_dir}"
        fix = f"Point data_dir (--data_dir in the scripts) at the data it was trained on (its run's: {run_data_dir})"
    else:
        where = ", ".join(f"{key}={datamodule.hparams.get(key)}" for key in _locations(type(datamodule)))
        fix = "Give the datamodule the data the model was trained on"
    name = datamodule.dataset_name
    raise ValueError(
        f"{path} was trained on {name} ({recorded}), but its datamodule now reads {name} ({current})"
        f"{f' from {where}' if where else ''}: the scores would be of other data. {fix}"
    )


def _locations(cls: type) -> list[str]:
    """The arguments a datamodule class must be given (where its data are, for the datamodules of files)."""
    return [name for name, parameter in init_parameters(cls).items() if parameter.default is parameter.empty]


def _no_data_dir(data_class: type, data_hparams: dict[str, Any], data_dir: str | Path) -> str:
    """Why ``data_dir`` cannot be applied to a datamodule that reads none, and what to do instead."""
    locations = _locations(data_class)
    message = (
        f"{data_class.__name__} reads no data_dir, so data_dir={data_dir} (--data_dir in the scripts) cannot say where "
        "its data are; leave it out"
    )
    if not locations:
        return message
    recorded = ", ".join(f"{key}={data_hparams[key]}" for key in locations if key in data_hparams)
    arguments = ", ".join(f"{key}=..." for key in locations)
    return (
        f"{message} to read them where the run did ({recorded}), or from Python give their new place: "
        f"load_checkpoint(checkpoint, {arguments})"
    )


def strict_json(value: Any) -> str:
    """``value`` (nested dicts, lists and numbers) as strict JSON: a non-finite float is ``null``."""
    return json.dumps(json.loads(json.dumps(value), parse_constant=lambda _: None), indent=2)


class AtLeast(argparse.Action):
    """An integer option's action, ``add_argument("--steps", action=AtLeast, least=1)``, refusing each value below
    ``least`` as ``--steps 0: expected at least 1 (what)``."""

    def __init__(self, *args: Any, least: int = 1, what: str = "", **kwargs: Any) -> None:
        super().__init__(*args, type=int, **kwargs)
        self.least, self.what = least, f" ({what})" if what else ""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, *_: Any) -> None:
        for value in values if isinstance(values, list) else [values]:
            if value < self.least:
                parser.error(f"{self.option_strings[0]} {value}: expected at least {self.least}{self.what}")
        setattr(namespace, self.dest, values)


__all__ = [
    "METRICS",
    "AtLeast",
    "anomaly_auroc",
    "anomaly_scores",
    "check_applicable",
    "check_data_source",
    "check_first_stage_metrics",
    "check_known",
    "check_metric_names",
    "code_scores",
    "datamodule_class",
    "datamodule_names",
    "encode_split",
    "evaluate",
    "evaluating",
    "first_stage_scores",
    "first_images",
    "frechet_distance",
    "gray_loader",
    "images_at_once",
    "init_parameters",
    "load_checkpoint",
    "metric_applies",
    "negative_log_likelihood",
    "not_applicable",
    "perceptual_scores",
    "pretrained_networks",
    "probe_accuracies",
    "quantizer_of",
    "real_frechet_distance",
    "reconstruction_frechet_distance",
    "reconstruction_scores",
    "require_generative",
    "split_loader",
    "strict_json",
]

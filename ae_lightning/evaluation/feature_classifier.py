"""A small CNN classifier of the dataset, whose features define the Frechet distance of generated samples.

Trained once per dataset by ``scripts/train_feature_classifier.py`` (or ``benchmarks/variants.py``) and cached as one
file of the weights and how they were obtained, test accuracy included, for every score to name."""

from __future__ import annotations

import dataclasses
import io
import os
import re
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from ae_lightning.training.fault_tolerance.checkpoint_io import write_atomically
from datamodules.base import ImageDataModule
from datamodules.checks import PositiveInt, check_arguments

NETWORK_SHAPE = ("input_shape", "num_classes", "num_features")  # the arguments of ClassifierCNN, saved with it


class ClassifierCNN(nn.Module):
    """Two conv-pool blocks (32, 64 channels), a ``num_features``-wide hidden layer (the features), class logits."""

    def __init__(self, input_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10, num_features: int = 128):
        super().__init__()
        channels, height, width = input_shape
        self.input_shape, self.num_classes, self.num_features = tuple(input_shape), num_classes, num_features
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * (height // 4) * (width // 4), num_features),
            nn.ReLU(),
        )
        self.head = nn.Linear(num_features, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate-layer features ``[B, num_features]`` of images ``[B, C, H, W]`` in [0, 1]."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits ``[B, num_classes]``."""
        return self.head(self.features(x))


class FeatureClassifier(L.LightningModule):
    """Trains a :class:`ClassifierCNN` (cross-entropy, Adam) and reports ``val/accuracy`` and ``test/accuracy``."""

    def __init__(
        self,
        input_shape: tuple[int, int, int] = (1, 28, 28),
        num_classes: int = 10,
        num_features: int = 128,
        lr: float = 1e-3,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.network = ClassifierCNN(tuple(input_shape), num_classes, num_features)
        self.val_accuracy = MulticlassAccuracy(num_classes, average="micro")
        self.test_accuracy = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, x: Tensor) -> Tensor:
        return self.network(x)

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        x, labels, _ = batch
        loss = F.cross_entropy(self.network(x), labels)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        self._log_accuracy(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        self._log_accuracy(batch, "test")

    def _log_accuracy(self, batch: tuple[Tensor, Tensor, Tensor], stage: str) -> None:
        x, labels, _ = batch
        accuracy = getattr(self, f"{stage}_accuracy")
        accuracy(self.network(x), labels)
        self.log(f"{stage}/accuracy", accuracy, prog_bar=stage == "val", batch_size=len(x))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


@dataclasses.dataclass
class ClassifierRecord:
    """A trained feature classifier (``network``, in eval mode) and how it was obtained."""

    network: ClassifierCNN
    path: Path  # the file it was loaded from or saved to
    test_accuracy: float  # on the dataset's test split
    dataset: str  # the datamodule's dataset_name, e.g. FashionMNIST
    data_source: str  # the datamodule's data_source (torchvision or the offline fallback sample)
    train_images: int
    epochs: int
    seed: int  # of the training run

    def metadata(self) -> dict[str, Any]:
        """Everything but the network, for reports."""
        info = {field.name: getattr(self, field.name) for field in dataclasses.fields(self) if field.name != "network"}
        return info | {"path": str(self.path)}


def check_classifiable(datamodule: ImageDataModule) -> None:
    """A ValueError saying why unless the data are labelled images, which a feature classifier can learn."""
    if len(datamodule.input_shape) != 3:
        raise ValueError(
            f"the Frechet distance compares images, but {type(datamodule).__name__} holds feature vectors of shape "
            f"{datamodule.input_shape}"
        )
    datamodule.setup()
    train = datamodule.splits.get("train")  # a stream holds no split in memory: its manifest knows the labels
    if not (bool((train[1] >= 0).all()) if train is not None else datamodule.has_labels):
        raise ValueError(
            f"the Frechet distance's feature classifier is trained on the dataset's labels, but "
            f"{type(datamodule).__name__} ({datamodule.dataset_name}) has none: use a folder with one subfolder per "
            "class, or array labels"
        )


def default_classifier_path(datamodule: ImageDataModule) -> Path:
    """``$AE_LIGHTNING_CACHE`` (default ``~/.cache/ae-lightning``) ``/feature-classifier-<Dataset>-<source>.pt``, other
    characters than letters, digits and ``._=-`` written ``_``."""
    cache = Path(os.environ.get("AE_LIGHTNING_CACHE", Path.home() / ".cache" / "ae-lightning"))
    name = re.sub(r"[^\w.=-]", "_", f"{datamodule.dataset_name}-{datamodule.data_source}", flags=re.ASCII)
    return cache / f"feature-classifier-{name}.pt"


def train_feature_classifier(
    datamodule: ImageDataModule,
    path: str | Path | None = None,
    epochs: PositiveInt = 3,
    seed: int = 0,
    accelerator: str = "auto",
    progress_bar: bool = True,
    overwrite: bool = False,
) -> ClassifierRecord:
    """Train a :class:`ClassifierCNN` on the training split (``binarize: none``, every label), test it, save it to
    ``path`` (None: :func:`default_classifier_path`); before any training, a FileExistsError for a file there (unless
    ``overwrite``), an OSError for a place this process cannot write. ``seed`` seeds the weights and batch order."""
    if datamodule.hparams.classes is not None:
        kept = datamodule.hparams.classes
        raise ValueError(f"the feature classifier needs every label, but the datamodule keeps only classes {kept}")
    binarize = datamodule.hparams.get("binarize", "none")
    if binarize != "none":
        raise ValueError(f"the feature classifier learns gray-level images, but the datamodule binarizes them "
                         f"(binarize: {binarize}); set binarize: none")  # fmt: skip
    check_arguments({"epochs": epochs}, train_feature_classifier)
    check_classifiable(datamodule)
    path = Path(path) if path is not None else default_classifier_path(datamodule)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; expected the name of the feature classifier's file")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} holds a feature classifier already; remove it or pass --overwrite to replace it")
    folder = next(folder for folder in path.absolute().parents if folder.exists())  # where the folders are made
    if not folder.is_dir():
        raise NotADirectoryError(f"{path}: {folder} is a file; expected a folder (or none yet) for the classifier")
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"{path}: this process cannot write in {folder}; expected a writable folder")
    L.seed_everything(seed, verbose=False)
    num_classes = len(datamodule.class_names or []) or int(datamodule.splits["train"][1].max()) + 1
    system = FeatureClassifier(datamodule.input_shape, num_classes)
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
        default_root_dir=path.parent,
    )
    trainer.fit(system, datamodule=datamodule)
    accuracy = float(trainer.test(system, datamodule=datamodule, verbose=False)[0]["test/accuracy"])
    record = ClassifierRecord(
        network=system.network.cpu().eval(),
        path=path,
        test_accuracy=accuracy,
        dataset=datamodule.dataset_name,
        data_source=datamodule.data_source,
        train_images=datamodule.split_size("train"),
        epochs=epochs,
        seed=seed,
    )
    save_feature_classifier(record)
    return record


def save_feature_classifier(record: ClassifierRecord) -> None:
    """Write ``record`` to ``record.path`` (through a temporary file, so a reader never sees half a file)."""
    record.path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "state_dict": record.network.state_dict(),
        **{key: getattr(record.network, key) for key in NETWORK_SHAPE},
        **{key: value for key, value in record.metadata().items() if key != "path"},
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_atomically(record.path, buffer.getvalue())


def load_feature_classifier(path: str | Path, data_arguments: str = "") -> ClassifierRecord:
    """Load a classifier saved by :func:`train_feature_classifier`: a FileNotFoundError saying how to train it (with
    ``data_arguments``, the script's data arguments) if ``path`` does not exist, a ValueError if it holds none."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no feature classifier at {path}; train one with `python scripts/train_feature_classifier.py "
            f"{data_arguments + ' ' if data_arguments else ''}--output {path}` (benchmarks/variants.py trains it on "
            "first use)"
        )
    fields = ("test_accuracy", "dataset", "data_source", "train_images", "epochs", "seed")
    expected = "a feature classifier written by scripts/train_feature_classifier.py"
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # not a torch file, corrupt, or holding objects a plain load refuses
        raise ValueError(f"{path} is not {expected}: it cannot be read ({type(error).__name__})") from None
    missing = [
        key for key in ("state_dict", *NETWORK_SHAPE, *fields) if not isinstance(payload, dict) or key not in payload
    ]
    if missing:
        raise ValueError(f"{path} is not {expected}: it holds no {', '.join(missing)}")
    network = ClassifierCNN(**{key: payload[key] for key in NETWORK_SHAPE})
    network.load_state_dict(payload["state_dict"])
    return ClassifierRecord(network=network.eval(), path=path, **{key: payload[key] for key in fields})


def check_classifier_data(record: ClassifierRecord, datamodule: ImageDataModule) -> None:
    """A ValueError unless ``record`` was trained on the datamodule's ``dataset_name`` at its image shape."""
    if record.dataset != datamodule.dataset_name:
        raise ValueError(
            f"the feature classifier {record.path} was trained on {record.dataset}, but the data are "
            f"{datamodule.dataset_name}: give a classifier of {datamodule.dataset_name}"
        )
    trained, given = tuple(record.network.input_shape), tuple(datamodule.input_shape)
    if trained != given:
        raise ValueError(
            f"the feature classifier {record.path} was trained on images of shape {trained}, but the data's are "
            f"{given}: give one trained at this size (saved with --output to a file of its own, so that the other "
            "stays)"
        )


__all__ = [
    "ClassifierCNN",
    "ClassifierRecord",
    "check_classifier_data",
    "FeatureClassifier",
    "default_classifier_path",
    "load_feature_classifier",
    "check_classifiable",
    "save_feature_classifier",
    "train_feature_classifier",
]

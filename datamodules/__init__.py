"""LightningDataModules: the MNIST family, torchvision datasets, image folders, array files, streams (litdata),
user-item interactions and dSprites. Each is imported on first use (``datamodules.MNISTDataModule``), so that
importing one, or :mod:`datamodules.checks`, does not import the others and their libraries.
"""

from __future__ import annotations

from datamodules.lazy import lazy_exports

# Public name -> the module that defines it.
_EXPORTS = {
    "ArrayDataModule": "datamodules.arrays",
    "DSpritesDataModule": "datamodules.dsprites",
    "FashionMNISTDataModule": "datamodules.mnist",
    "IDXDataModule": "datamodules.mnist",
    "ImageDataModule": "datamodules.base",
    "ImageFolderDataModule": "datamodules.folder",
    "InteractionsDataModule": "datamodules.interactions",
    "KMNISTDataModule": "datamodules.mnist",
    "MNISTDataModule": "datamodules.mnist",
    "StreamingDataModule": "datamodules.streaming",
    "TensorBatchLoader": "datamodules.loader",
    "TorchvisionDataModule": "datamodules.torchvision_data",
}


__getattr__, __dir__ = lazy_exports("datamodules", _EXPORTS)

__all__ = sorted(_EXPORTS)

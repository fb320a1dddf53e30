"""LightningDataModules: the MNIST family, torchvision datasets, image folders, array files, streams (litdata),
user-item interactions and dSprites."""

from datamodules.arrays import ArrayDataModule
from datamodules.base import ImageDataModule
from datamodules.dsprites import DSpritesDataModule
from datamodules.folder import ImageFolderDataModule
from datamodules.interactions import InteractionsDataModule
from datamodules.loader import TensorBatchLoader
from datamodules.mnist import FashionMNISTDataModule, IDXDataModule, KMNISTDataModule, MNISTDataModule
from datamodules.streaming import StreamingDataModule
from datamodules.torchvision_data import TorchvisionDataModule

__all__ = [
    "ArrayDataModule",
    "DSpritesDataModule",
    "FashionMNISTDataModule",
    "IDXDataModule",
    "ImageDataModule",
    "ImageFolderDataModule",
    "InteractionsDataModule",
    "KMNISTDataModule",
    "MNISTDataModule",
    "StreamingDataModule",
    "TensorBatchLoader",
    "TorchvisionDataModule",
]

"""LightningDataModules for MNIST-style 28x28 grayscale image datasets."""

from datamodules.base import ImageDataModule
from datamodules.loader import TensorBatchLoader
from datamodules.mnist import FashionMNISTDataModule, KMNISTDataModule, MNISTDataModule

__all__ = ["FashionMNISTDataModule", "ImageDataModule", "KMNISTDataModule", "MNISTDataModule", "TensorBatchLoader"]

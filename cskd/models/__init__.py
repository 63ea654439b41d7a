"""Model zoo. Importing this package registers every architecture."""

from cskd.models import imagenet, mobile, resnet_cifar, vgg, wrn  # noqa: F401  (registers)
from cskd.models.preprocess import Preprocessed
from cskd.models.registry import create_model, list_models, register_model

__all__ = ["Preprocessed", "create_model", "list_models", "register_model"]

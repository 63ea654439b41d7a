"""Models from outside the registry: ``torchvision:<name>`` (any torchvision classification
builder) and ``timm:<name>`` (timm, the optional extra ``[timm]``), built untrained with
the data set's class count, so a pretrained file can be loaded into them (``cskd.models.init``)."""

from __future__ import annotations

import torch.nn as nn

PREFIXES = ("torchvision:", "timm:")
# The normalisation ImageNet-pretrained weights expect (torchvision's and timm's default).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def is_external(name: str) -> bool:
    return name.startswith(PREFIXES)


def check_external(name: str) -> None:
    """Raise ``ValueError`` (one line) unless ``name`` is a buildable torchvision or timm model."""
    source, _, arch = name.partition(":")
    if source == "torchvision":
        import torchvision

        # classification builders only
        known = torchvision.models.list_models(module=torchvision.models)
        if arch not in known:
            close = [m for m in known if m.startswith(arch[:5])][:5]
            raise ValueError(f"torchvision has no classification model {arch!r}"
                             + (f"; close: {', '.join(close)}" if close else ""))
        return
    try:
        import timm
    except ImportError:
        raise ValueError(f"{name} needs timm: pip install 'cskd-pipeline[timm]'") from None
    if not timm.is_model(arch):
        close = timm.list_models(f"{arch[:6]}*")[:5]
        raise ValueError(
            f"timm has no model {arch!r}" + (f"; close: {', '.join(close)}" if close else "")
        )


def create_external(name: str, *, num_classes: int, in_channels: int) -> nn.Module:
    source, _, arch = name.partition(":")
    check_external(name)
    if source == "torchvision":
        if in_channels != 3:
            raise ValueError(
                f"{name} takes 3-channel images and the data set has {in_channels}; "
                f"set data.grayscale: false, or use a registry model"
            )
        import torchvision

        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    import timm

    return timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_channels)


def classifier_parameters(net: nn.Module, num_classes: int) -> set[str]:
    """Parameter names of the classifier head: the last ``nn.Linear`` (or 1x1 ``nn.Conv2d``)
    whose output is the class count. Its weights are the ones a different class count changes."""
    head = None
    for module_name, module in net.named_modules():
        if (isinstance(module, nn.Linear) and module.out_features == num_classes) or (
            isinstance(module, nn.Conv2d)
            and module.out_channels == num_classes
            and module.kernel_size == (1, 1)
        ):
            head = module_name
    if head is None:
        return set()
    return {f"{head}.{p}" if head else p for p, _ in net.get_submodule(head).named_parameters()}

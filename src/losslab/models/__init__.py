"""Models by name: CIFAR ResNets, RegulQuant's ConvNet, CIFAR VGGs, small digits models, and every timm model.

Importing this package registers losslab's architectures in timm's registry, so both work::

    import timm
    from losslab.models import create_model

    model = create_model("cifar_resnet20", num_classes=10)          # with model.losslab_recipe
    same = timm.create_model("cifar_resnet20", num_classes=10)      # plain timm
    vit = create_model("vit_small_patch16_224", num_classes=10, img_size=32)

Families (one file each): ``cifar_resnet`` (ResNet-20/32/44/56/110), ``cifar_resnet_imagenet_depths``
(ResNet-18/34/50/101 and ResNet-18 without BN), ``regulquant_convnet``, ``cifar_vgg`` (VGG-11/13/16/19 with BN)
``small_nets`` (``small_cnn``, ``mlp``) and ``wide_resnet`` (WRN-d-k as ``wide_resnet{d}_{k}``/``wrn28_10``,
EigenDamage's ``cifar_resnet32_wide``).
"""

from losslab.models import (
    cifar_resnet,
    cifar_resnet_imagenet_depths,
    cifar_vgg,
    regulquant_convnet,
    small_nets,
    wide_resnet,
)
from losslab.models.factory import create_model, list_models, model_recipe, rebuild, small_image_kwargs

__all__ = [
    "cifar_resnet",
    "cifar_resnet_imagenet_depths",
    "cifar_vgg",
    "create_model",
    "list_models",
    "model_recipe",
    "rebuild",
    "regulquant_convnet",
    "small_image_kwargs",
    "small_nets",
    "wide_resnet",
]

from .pspnet import PSPNet, PyramidPooling, build_model, feature_size, min_input_size
from .resnet import ResNet, resnet

__all__ = ["PSPNet", "PyramidPooling", "ResNet", "build_model", "feature_size", "min_input_size", "resnet"]

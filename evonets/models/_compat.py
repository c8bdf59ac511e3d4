"""Version-specific imports from transformers, kept in one place.

transformers 5.x moved the backbone mixins from `utils.backbone_utils` to `backbone_utils`, renamed
`PretrainedConfig` to `PreTrainedConfig`, and added `initialization` (init functions that respect weights
already loaded by `from_pretrained`) and `GradientCheckpointingLayer`. We support 5.x; the fallbacks keep the
remote-code copy of these files importable on late 4.x releases.
"""

try:
    from transformers.backbone_utils import BackboneConfigMixin, BackboneMixin
except ImportError:  # transformers 4.x
    from transformers.utils.backbone_utils import BackboneConfigMixin, BackboneMixin

try:
    from transformers import PreTrainedConfig
except ImportError:  # transformers 4.x
    from transformers import PretrainedConfig as PreTrainedConfig

try:
    from transformers import initialization as init
except ImportError:  # transformers 4.x
    from torch.nn import init

try:
    from transformers.modeling_layers import GradientCheckpointingLayer
except ImportError:  # transformers < 4.52
    from torch.nn import Module as GradientCheckpointingLayer

try:
    from transformers.image_processing_backends import PilBackend as ImageProcessorBase
except ImportError:  # transformers 4.x: the slow processors are the PIL/NumPy ones
    from transformers.image_processing_utils import BaseImageProcessor as ImageProcessorBase

__all__ = [
    "BackboneConfigMixin",
    "BackboneMixin",
    "GradientCheckpointingLayer",
    "ImageProcessorBase",
    "PreTrainedConfig",
    "init",
]

"""EvoNets: hybrid state-space / attention / conv vision backbones on the transformers API.

Importing the package registers the EvoNet classes with transformers' Auto classes, and marks them for
`register_for_auto_class`, so a saved folder carries its code and also loads with `trust_remote_code=True`
where evonets is not installed.
"""

from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
)

from .configuration_evonet import BLOCK_TYPES, EvoNetConfig
from .image_processing_evonet import EvoNetImageProcessor
from .modeling_evonet import (
    MIXERS,
    EvoNetBackbone,
    EvoNetForImageClassification,
    EvoNetModel,
    EvoNetPreTrainedModel,
)
from .search_space import EvoNetSupernetConfig, SearchSpace
from .supernet import EvoNetSupernet

__version__ = "0.1.0"

AutoConfig.register(EvoNetConfig.model_type, EvoNetConfig, exist_ok=True)
AutoModel.register(EvoNetConfig, EvoNetModel, exist_ok=True)
AutoModelForImageClassification.register(EvoNetConfig, EvoNetForImageClassification, exist_ok=True)
AutoBackbone.register(EvoNetConfig, EvoNetBackbone, exist_ok=True)
AutoImageProcessor.register(EvoNetConfig, slow_image_processor_class=EvoNetImageProcessor, exist_ok=True)
AutoConfig.register(EvoNetSupernetConfig.model_type, EvoNetSupernetConfig, exist_ok=True)
AutoModel.register(EvoNetSupernetConfig, EvoNetSupernet, exist_ok=True)
AutoModelForImageClassification.register(EvoNetSupernetConfig, EvoNetSupernet, exist_ok=True)

EvoNetConfig.register_for_auto_class()
EvoNetModel.register_for_auto_class("AutoModel")
EvoNetForImageClassification.register_for_auto_class("AutoModelForImageClassification")
EvoNetBackbone.register_for_auto_class("AutoBackbone")
EvoNetImageProcessor.register_for_auto_class("AutoImageProcessor")
EvoNetSupernetConfig.register_for_auto_class()
EvoNetSupernet.register_for_auto_class("AutoModelForImageClassification")

__all__ = [
    "BLOCK_TYPES",
    "MIXERS",
    "EvoNetBackbone",
    "EvoNetConfig",
    "EvoNetForImageClassification",
    "EvoNetImageProcessor",
    "EvoNetModel",
    "EvoNetPreTrainedModel",
    "EvoNetSupernet",
    "EvoNetSupernetConfig",
    "SearchSpace",
    "__version__",
]

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
    AutoModelForDepthEstimation,
    AutoModelForImageClassification,
    AutoModelForSemanticSegmentation,
)

from .models.configuration_evonet import BLOCK_TYPES, EvoNetConfig
from .models.detection import build_rt_detr
from .models.image_processing_evonet import EvoNetImageProcessor
from .models.modeling_evonet import (
    MIXERS,
    EvoNetBackbone,
    EvoNetForImageClassification,
    EvoNetModel,
    EvoNetPreTrainedModel,
)
from .models.modeling_evonet_depth import EvoNetDepthConfig, EvoNetForDepthEstimation
from .models.modeling_evonet_segmentation import EvoNetForSemanticSegmentation, EvoNetSegmentationConfig, build_upernet
from .models.modeling_evonet_view_synthesis import EvoNetForNovelViewSynthesis, EvoNetViewSynthesisConfig
from .models.search_space import EvoNetSupernetConfig, SearchSpace
from .models.supernet import EvoNetSupernet

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
AutoConfig.register(EvoNetDepthConfig.model_type, EvoNetDepthConfig, exist_ok=True)
AutoModelForDepthEstimation.register(EvoNetDepthConfig, EvoNetForDepthEstimation, exist_ok=True)
EvoNetDepthConfig.register_for_auto_class()
EvoNetForDepthEstimation.register_for_auto_class("AutoModelForDepthEstimation")
AutoConfig.register(EvoNetSegmentationConfig.model_type, EvoNetSegmentationConfig, exist_ok=True)
AutoModelForSemanticSegmentation.register(EvoNetSegmentationConfig, EvoNetForSemanticSegmentation, exist_ok=True)
EvoNetSegmentationConfig.register_for_auto_class()
EvoNetForSemanticSegmentation.register_for_auto_class("AutoModelForSemanticSegmentation")
# transformers has no Auto class for novel view synthesis: the model registers with AutoModel.
AutoConfig.register(EvoNetViewSynthesisConfig.model_type, EvoNetViewSynthesisConfig, exist_ok=True)
AutoModel.register(EvoNetViewSynthesisConfig, EvoNetForNovelViewSynthesis, exist_ok=True)
EvoNetViewSynthesisConfig.register_for_auto_class()
EvoNetForNovelViewSynthesis.register_for_auto_class("AutoModel")

__all__ = [
    "BLOCK_TYPES",
    "MIXERS",
    "EvoNetBackbone",
    "EvoNetConfig",
    "EvoNetDepthConfig",
    "EvoNetForDepthEstimation",
    "EvoNetForImageClassification",
    "EvoNetForNovelViewSynthesis",
    "EvoNetForSemanticSegmentation",
    "EvoNetImageProcessor",
    "EvoNetModel",
    "EvoNetPreTrainedModel",
    "EvoNetSegmentationConfig",
    "EvoNetSupernet",
    "EvoNetSupernetConfig",
    "EvoNetViewSynthesisConfig",
    "SearchSpace",
    "__version__",
    "build_rt_detr",
    "build_upernet",
]

"""EvoNet image processor: resize, rescale to [0, 1], normalise, channels-first, with PIL/NumPy only."""

from __future__ import annotations

from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling

from ._compat import ImageProcessorBase


class EvoNetImageProcessor(ImageProcessorBase):
    r"""
    Turns images (PIL, NumPy or torch; any mode) into `pixel_values` of shape (B, 3, size, size).

    Defaults are ImageNet's (224 x 224, bicubic, ImageNet mean / std); models trained on other data save their
    own processor next to the weights (`processor.save_pretrained(folder)`), so `pipeline("image-classification",
    model=folder)` finds it. Pure PIL / NumPy: no torchvision needed.
    """

    model_input_names = ["pixel_values"]
    resample = PILImageResampling.BICUBIC
    image_mean = IMAGENET_DEFAULT_MEAN
    image_std = IMAGENET_DEFAULT_STD
    size = {"height": 224, "width": 224}
    do_resize = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True


__all__ = ["EvoNetImageProcessor"]

"""EvoNet image processor: resize, rescale to [0, 1], normalise, channels-first, with PIL/NumPy only."""

from __future__ import annotations

from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling

from ._compat import ImageProcessorBase


class EvoNetImageProcessor(ImageProcessorBase):
    r"""
    Turns images into `pixel_values` of shape (B, 3, size, size): PIL images of any mode, or NumPy arrays / torch
    tensors of shape (H, W) (greyscale), (H, W, C) or (C, H, W) with C = 1 (greyscale), 3 (RGB) or 4 (RGBA). Anything
    else (an empty image, 2 or 5 channels, more dimensions) is a `ValueError` that names the image and its shape.
    A batch may also come as one (B, H, W, C) or (B, C, H, W) array.

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

    def preprocess(self, images, *args, **kwargs):
        """`transformers`' preprocessing, after `check_images` (see the class docstring)."""
        return super().preprocess(check_images(images), *args, **kwargs)


CHANNEL_COUNTS = (1, 3, 4)


def check_images(images):
    """The images (one, or a list) as given, with (H, W) greyscale arrays given a channel axis; `ValueError` for an
    empty image or a shape that is not an image."""
    if isinstance(images, (list, tuple)):
        return [_check_image(image, f"images[{index}]") for index, image in enumerate(images)]
    if len(getattr(images, "shape", ())) == 4:  # a batch in one array
        for index in range(images.shape[0]):
            _check_image(images[index], f"images[{index}]")
        return images
    return _check_image(images, "images")


def _check_image(image, where: str):
    if hasattr(image, "getbands"):  # PIL: any mode converts to RGB; only the size can be wrong
        if image.width == 0 or image.height == 0:
            raise ValueError(f"{where} is an empty image ({image.width} x {image.height} pixels).")
        return image
    shape = tuple(getattr(image, "shape", ()))
    if len(shape) == 2:  # greyscale (H, W): give it the channel axis the transformers pipeline needs
        image = image[..., None]
        shape = (*shape, 1)
    channels_last = len(shape) == 3 and shape[-1] in CHANNEL_COUNTS
    channels_first = len(shape) == 3 and shape[0] in CHANNEL_COUNTS
    if not (channels_last or channels_first):
        raise ValueError(
            f"{where} has shape {shape}: expected an image of shape (H, W), (H, W, C) or (C, H, W) with C in "
            f"{list(CHANNEL_COUNTS)} (greyscale, RGB, RGBA), or a PIL image."
        )
    height, width = shape[:2] if channels_last else shape[1:]
    if height == 0 or width == 0:
        raise ValueError(f"{where} is an empty image (shape {shape}).")
    return image


__all__ = ["CHANNEL_COUNTS", "EvoNetImageProcessor", "check_images"]

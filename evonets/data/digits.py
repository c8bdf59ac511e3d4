"""Datasets for examples, tests and the quickstart, as `datasets.DatasetDict`s of PIL images and labels.

`datasets` and scikit-learn are imported lazily: the modeling code never needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import datasets


def load_digits_dataset(seed: int = 0, validation_size: float = 0.1, test_size: float = 0.2) -> datasets.DatasetDict:
    """scikit-learn's bundled real handwritten digits (1,797 8x8 greyscale images, 10 classes).

    Returns a `DatasetDict` with fixed, stratified `train` / `validation` / `test` splits (same `seed`, same
    split, on every machine). Columns: `image` (PIL, mode "L", 8x8, 0..255) and `label` (`ClassLabel` "0".."9").
    The test split is for the final report only: training and search select on `validation`.
    """
    import datasets
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    labels = digits.target.astype(np.int64)
    indices = np.arange(len(labels))
    train_val, test = train_test_split(indices, test_size=test_size, random_state=seed, stratify=labels)
    train, validation = train_test_split(
        train_val,
        test_size=validation_size / (1.0 - test_size),
        random_state=seed,
        stratify=labels[train_val],
    )
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(d) for d in range(10)])}
    )

    def split(rows: np.ndarray) -> datasets.Dataset:
        return datasets.Dataset.from_dict(
            {"image": [Image.fromarray(images[i], mode="L") for i in rows], "label": labels[rows].tolist()},
            features=features,
        )

    return datasets.DatasetDict({"train": split(train), "validation": split(validation), "test": split(test)})


__all__ = ["load_digits_dataset"]

"""Data: one module per task family, each turning real files into `datasets` objects and model inputs.

- `config`: `DataConfig`, the `data:` section of the pipeline configs (source, split, preprocessing).
- `classification`: the image-classification path of distillation, search and rank check (`load_data`, the
  validation split, transforms, the epoch sampler, `collate`, `resize_batch`); `digits` is its bundled default.
- `segmentation`, `detection`, `depth`, `llff`: loaders, collators and metrics of the downstream heads.
- `paths`: where the shared real sample data lives (`shared_data_dir`).

Nothing here is imported by the models (`evonets.models`), so a saved model folder never depends on a data loader.
"""

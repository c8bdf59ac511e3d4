"""ONNX export of extracted and task models, checked against PyTorch and timed in onnxruntime.

`export_pretrained(model, path)` works for any `PreTrainedModel` whose forward takes `pixel_values` and returns a
`ModelOutput` of tensors (an extracted `EvoNetForImageClassification`, `EvoNetModel`, `EvoNetBackbone`, or a task
model with an EvoNet backbone such as transformers' `UperNetForSemanticSegmentation`), and for any model with an
`example_inputs(image_size, batch_size=...)` method giving the named inputs of its forward
(`EvoNetForNovelViewSynthesis`: source images of `image_size`, poses, intrinsics, target rays, near / far), which are
then the ONNX inputs. It reuses the project's two pieces rather than re-doing them:

- `evonets.deploy.onnx_export.export_onnx`: the export (free batch axis), run in onnxruntime on random inputs at two batch
  sizes and compared with PyTorch output by output (`OnnxCheckError` beyond `atol`);
- `evonets.deploy.latency.measure_latency` with `LatencySettings(backend="onnxruntime")`: the latency of the model in an
  onnxruntime session (it exports its own fixed-shape copy of the same model), stamped with the device fingerprint.

`export_folder(folder)` does it for a saved model folder and writes `model.onnx` and `onnx_export.json` into it
(which the cards read); `run_latency_settings(run)` are a search run's own latency settings (threads, batch,
repeats) with the onnxruntime backend, so that the ONNX Runtime latency sits beside the search's PyTorch latency on
equal terms. This module knows nothing of cards: `hub_cards.run_export.export_run` exports a run's front members and
then rebuilds their cards.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
ONNX_REPORT = "onnx_export.json"


def _config_value(config, name: str):
    """`config.<name>`, else the backbone config's (task models keep the image geometry there)."""
    value = getattr(config, name, None)
    if value is None and getattr(config, "backbone_config", None) is not None:
        value = getattr(config.backbone_config, name, None)
    return value


def export_pretrained(
    model,
    path: str | Path,
    *,
    image_size: int | None = None,
    latency=None,
    atol: float = 1e-4,
    rtol: float = 0.0,
    dynamo: bool = False,
) -> dict:
    """Export `model` to the ONNX file `path`, check it against PyTorch in onnxruntime, time it there.

    Args:
        model: a `PreTrainedModel` taking `pixel_values` (B, C, H, W); exported in eval mode, its mode restored.
        image_size: side of the square input; default `config.image_size` (or the backbone config's).
        latency: `evonets.deploy.latency.LatencySettings` with `backend="onnxruntime"` (default: its defaults).
        atol: largest absolute difference allowed between onnxruntime and PyTorch outputs.
        rtol: plus this fraction of |PyTorch output| (for outputs of large magnitude, such as rendered depths).
        dynamo: use the `torch.export`-based exporter instead of the TorchScript tracer.

    Returns:
        A JSON-able dict: the export (exporter, opset, names, traced shape, batch sizes checked, largest difference
        per output) and the onnxruntime latency (median, quartiles, IQR, fingerprint) with its fingerprint key.
    """
    from evonets.deploy.fingerprint import fingerprint_key
    from evonets.deploy.latency import LatencySettings, measure_latency
    from evonets.deploy.onnx_export import export_onnx

    settings = latency if latency is not None else LatencySettings(backend="onnxruntime")
    if settings.backend != "onnxruntime":
        raise ValueError(f"latency.backend = {settings.backend!r} is invalid here: expected 'onnxruntime'.")
    image_size = image_size if image_size is not None else _config_value(model.config, "image_size")
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(
            f"image_size = {image_size!r} is invalid: expected a positive int (the model's config has no image_size; "
            "pass --image-size)."
        )
    num_channels = _config_value(model.config, "num_channels") or 3
    if num_channels != getattr(model.config, "num_channels", 3):
        raise ValueError(
            f"the backbone takes num_channels = {num_channels}, but export_onnx feeds the task model "
            f"{getattr(model.config, 'num_channels', 3)}-channel inputs: set the task config's num_channels too."
        )
    named_inputs = getattr(model, "example_inputs", None)
    report = export_onnx(
        model,
        path,
        image_size=image_size,
        dynamic_batch=True,
        check=True,
        atol=atol,
        rtol=rtol,
        dynamo=dynamo,
        example_inputs=named_inputs(image_size) if named_inputs is not None else None,
    )
    timed_inputs = named_inputs(image_size, batch_size=settings.batch_size) if named_inputs is not None else None
    measurement = measure_latency(model, image_size, settings, num_channels=num_channels, example_inputs=timed_inputs)
    return {
        "file": Path(path).name,
        "model_class": type(model).__name__,
        "exporter": report.exporter,
        "opset": report.opset,
        "input_names": report.input_names,
        "output_names": report.output_names,
        "input_shape": list(report.input_shape),
        "input_shapes": {name: list(shape) for name, shape in report.input_shapes.items()},
        "dynamic_batch": report.dynamic_batch,
        "checked_batch_sizes": report.checked_batch_sizes,
        "max_abs_diff": report.max_abs_diff,
        "max_abs_diff_per_output": report.max_abs_diff_per_output,
        "atol": atol,
        "rtol": rtol,
        "providers": report.providers,
        "export_seconds": report.export_seconds,
        "latency": measurement.to_dict(),
        "latency_fingerprint_key": fingerprint_key(measurement.fingerprint),
    }


def load_pretrained(folder: str | Path):
    """The model saved in `folder`, as the class its `config.json` names (`architectures`), from `evonets` (whose
    import registers the EvoNet configs, also as backbones of task models) or `transformers`."""
    import transformers

    import evonets

    folder = Path(folder).expanduser()
    if not (folder / "config.json").is_file():
        raise ValueError(
            f"PATH {str(folder)!r} is neither a search run folder nor a saved model folder (no config.json)."
        )
    config = transformers.AutoConfig.from_pretrained(folder)
    names = config.architectures or []
    for name in names:
        model_class = getattr(evonets, name, None) or getattr(transformers, name, None)
        if model_class is not None:
            return model_class.from_pretrained(folder).eval()
    raise ValueError(
        f"config.json of {folder} names architectures = {names!r}: expected a model class of evonets or transformers."
    )


def export_folder(
    folder: str | Path, *, image_size: int | None = None, latency=None, atol: float = 1e-4, rtol: float = 0.0
) -> dict:
    """Export the model saved in `folder` to `folder/model.onnx` and write the result to `folder/onnx_export.json`."""
    folder = Path(folder).expanduser()
    model = load_pretrained(folder)
    result = export_pretrained(model, folder / ONNX_FILE, image_size=image_size, latency=latency, atol=atol, rtol=rtol)
    (folder / ONNX_REPORT).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result


def run_latency_settings(run):
    """The run's latency settings (threads, batch, warm-up, repeats, clock) with the onnxruntime backend."""
    from evonets.deploy.latency import LatencySettings

    saved = run.config.get("latency", {})
    fields = {field.name for field in dataclasses.fields(LatencySettings)}
    return LatencySettings(**{**{k: v for k, v in saved.items() if k in fields}, "backend": "onnxruntime"}).validate()


__all__ = ["ONNX_FILE", "ONNX_REPORT", "export_folder", "export_pretrained", "load_pretrained", "run_latency_settings"]

"""Deployment: what a found network costs on a device, as pure functions of a model and settings.

- `onnx_export`: ONNX export of any EvoNet (all four mixers), checked against PyTorch in ONNX Runtime.
- `profiling`: MACs (matmuls and convs by FlopCounterMode, plus the selective scan's state updates) and parameters.
- `latency`: latency measurement (PyTorch eager or ONNX Runtime), timed relative to in-process conditions.
- `fingerprint`: the device fingerprint a latency figure is only valid for.
- `allocator`: glibc malloc keeping freed memory, which latency measurement sets and the fingerprint reports.
"""

"""Latency measurement and device fingerprints (`evonets.deploy.latency`, `evonets.deploy.fingerprint`): settings,
fingerprint fields and key, a fingerprint that changes nothing in the process, interleaved timing and measurement (no
timing thresholds: the machine is shared, so only orderings that hold by a wide margin are asserted)."""

import ctypes
import importlib
import json
import platform

import onnxruntime
import pytest
import torch

import evonets
from evonets import EvoNetForImageClassification, EvoNetSupernetConfig
from evonets.deploy import allocator
from evonets.deploy.fingerprint import device_fingerprint, fingerprint_key
from evonets.deploy.latency import (
    LatencyMeasurement,
    LatencySettings,
    _time_interleaved,
    measure_latency,
    prepare_process,
)

FAST = {"warmup": 1, "repeats": 5, "num_threads": 1}
# The module itself (the package re-exports the function under the same name).
scan_module = importlib.import_module("evonets.models.selective_scan")


pytestmark = pytest.mark.usefixtures("one_thread")


def _small_space() -> EvoNetSupernetConfig:
    """Two stages: SS2D, SSD and conv blocks (d_state 2 or 4) in stage 0, conv and attention (1 or 2 heads) in stage 1,
    at 8 and 16 px: the space of `test_search_latency_table.py`, whose networks time in milliseconds."""
    return EvoNetSupernetConfig.tiny(
        resolution_choices=[8, 16],
        depth_choices=[[1, 2], [1]],
        width_choices=[[8, 16], [16, 24]],
        block_type_choices=[["conv", "ss2d", "ssd"], ["conv", "attention"]],
        mlp_ratio_choices=[2.0],
        d_state_choices=[2, 4],
        ssm_ratio_choices=[1.0],
        num_heads_choices=[[1], [1, 2]],
        num_labels=10,
    )


# Settings and fingerprint -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("backend", "tensorrt", "one of ['torch', 'onnxruntime']"),
        ("batch_size", 0, "an int >= 1"),
        ("batch_size", True, "an int >= 1"),
        ("warmup", -1, "an int >= 0"),
        ("repeats", 0, "an int >= 1"),
        ("repeats", 2.5, "an int >= 1"),
        ("num_threads", 0, "None or an int >= 1"),
        ("clock", "monotonic", "one of ['wall', 'cpu']"),
        ("keep_freed_memory", "yes", "a bool"),
    ],
)
def test_settings_validation_names_the_field(field, value, expected):
    with pytest.raises(ValueError) as error:
        LatencySettings(**{field: value}).validate()
    assert f"latency.{field} = {value!r} is invalid" in str(error.value)
    assert expected in str(error.value)


def test_settings_threads_default_to_torch():
    assert LatencySettings().threads == torch.get_num_threads() == 1
    assert LatencySettings(num_threads=2).threads == 2


def test_cpu_clock_needs_one_thread():
    LatencySettings(clock="cpu").validate()  # torch's current setting: 1 thread
    with pytest.raises(ValueError, match="latency.clock = 'cpu' is invalid: expected 'wall' with 2 threads"):
        LatencySettings(clock="cpu", num_threads=2).validate()


def test_fingerprint_fields_and_key():
    torch_print = device_fingerprint(LatencySettings(num_threads=1))
    for name in ("cpu", "logical_cores", "num_threads", "torch", "onnxruntime", "backend", "scan_backend"):
        assert name in torch_print
    for name in ("batch_size", "python", "os", "clock", "allocator"):
        assert name in torch_print
    assert torch_print["backend"] == "torch" and torch_print["onnxruntime"] is None
    assert torch_print["num_threads"] == 1 and torch_print["torch"] == torch.__version__
    assert torch_print["evonets"] == evonets.__version__
    assert torch_print["scan_backend"] in ("cpu_fused", "torch")
    assert json.loads(json.dumps(torch_print)) == torch_print

    ort_print = device_fingerprint(LatencySettings(backend="onnxruntime", num_threads=1, batch_size=4))
    assert ort_print["onnxruntime"] == onnxruntime.__version__ and ort_print["scan_backend"] == "torch"
    assert ort_print["batch_size"] == 4

    key = fingerprint_key(torch_print)
    assert len(key) == 12 and int(key, 16) >= 0
    assert fingerprint_key(device_fingerprint(LatencySettings(num_threads=1))) == key
    assert fingerprint_key(dict(reversed(list(torch_print.items())))) == key  # order-independent
    assert fingerprint_key(device_fingerprint(LatencySettings(num_threads=2))) != key
    assert fingerprint_key(ort_print) != key
    assert fingerprint_key(device_fingerprint(LatencySettings(num_threads=1, clock="cpu"))) != key


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_fingerprint_records_the_allocator(monkeypatch):
    assert device_fingerprint(LatencySettings(num_threads=1))["allocator"] == "glibc, freed memory kept"
    with monkeypatch.context() as patched:  # a process where no measurement kept freed memory yet
        patched.setattr(allocator, "_kept", False)
        assert device_fingerprint(LatencySettings(num_threads=1, keep_freed_memory=False))["allocator"] == "default"
    # Once kept (by a measurement), freed memory stays kept in this process: the fingerprint says so whatever the
    # settings ask.
    prepare_process(LatencySettings(num_threads=1))
    kept = device_fingerprint(LatencySettings(num_threads=1, keep_freed_memory=False))["allocator"]
    assert kept == "glibc, freed memory kept"


def test_fingerprint_changes_nothing_in_the_process(monkeypatch):
    """Computing a fingerprint neither calls mallopt (no C library is even loaded) nor builds the fused scan kernel,
    and it is the same fingerprint before the measurement prepares the process and after."""
    loaded, built = [], []
    monkeypatch.delenv(scan_module.BACKEND_ENV_VAR, raising=False)
    settings = LatencySettings(num_threads=2)
    with monkeypatch.context() as patched:  # a process where neither was done yet: nothing kept, the kernel not tried
        patched.setattr(allocator, "_kept", False)
        patched.setattr(scan_module, "_cpu_kernel_loaded", None)
        patched.setattr(ctypes, "CDLL", lambda *args, **kwargs: loaded.append(args))
        patched.setattr(scan_module, "_build_and_load", lambda *args, **kwargs: built.append(args))
        threads = torch.get_num_threads()
        before = device_fingerprint(settings)
        device_fingerprint(LatencySettings(backend="onnxruntime", num_threads=2))
        assert loaded == [] and built == []
        assert allocator.freed_memory_kept() is False and scan_module._cpu_kernel_loaded is None
        assert torch.get_num_threads() == threads

    # The real process, as a measurement prepares it.
    prepare_process(settings)
    assert device_fingerprint(settings) == before
    assert before["scan_backend"] == ("cpu_fused" if scan_module._cpu_kernel_loaded else "torch")
    if can_keep := allocator.can_keep_freed_memory():
        assert allocator.freed_memory_kept()
    assert before["allocator"] == ("glibc, freed memory kept" if can_keep else "default")


def test_fingerprint_scan_backend_follows_the_kernel(monkeypatch, tmp_path):
    """The scan backend reported without building: the kernel's outcome once tried, else what its build needs."""
    settings = LatencySettings(num_threads=1)
    monkeypatch.delenv(scan_module.BACKEND_ENV_VAR, raising=False)
    for loaded, expected in ((True, "cpu_fused"), (False, "torch")):
        monkeypatch.setattr(scan_module, "_cpu_kernel_loaded", loaded)
        assert device_fingerprint(settings)["scan_backend"] == expected
    monkeypatch.setattr(scan_module, "_cpu_kernel_loaded", None)
    monkeypatch.setattr(scan_module, "_CPU_KERNEL_SOURCE", tmp_path / "missing.cpp")  # as in a remote-code folder
    assert device_fingerprint(settings)["scan_backend"] == "torch"
    monkeypatch.setenv(scan_module.BACKEND_ENV_VAR, "reference")
    assert device_fingerprint(settings)["scan_backend"] == "reference"
    assert scan_module._cpu_kernel_loaded is None  # still not tried


# Measurement --------------------------------------------------------------------------------------------------------


def test_time_interleaved_counts_and_spreads_the_runs():
    counts = [0, 0, 0]
    calls = [lambda index=index: counts.__setitem__(index, counts[index] + 1) for index in range(3)]
    samples = _time_interleaved(calls, warmup=2, repeats=7, rounds=3)
    assert [[len(times) for times in rounds] for rounds in samples] == [[3, 2, 2]] * 3  # samples[call][round]
    assert counts == [2 + 7 + 3] * 3  # warm-up, timed runs, one re-warm per round
    assert all(value >= 0 for rounds in samples for times in rounds for value in times)
    single = [0]
    (rounds,) = _time_interleaved([lambda: single.__setitem__(0, single[0] + 1)], warmup=3, repeats=4, rounds=1)
    assert [len(times) for times in rounds] == [4] and single == [7]
    # A floor per call and round (the reference's): more runs of that call only.
    samples = _time_interleaved(calls, warmup=0, repeats=2, rounds=2, least_per_round=[0, 0, 3])
    assert [[len(times) for times in rounds] for rounds in samples] == [[1, 1], [1, 1], [3, 3]]


@pytest.mark.parametrize(
    "backend, clock", [("torch", "wall"), ("onnxruntime", "wall"), ("torch", "cpu"), ("onnxruntime", "cpu")]
)
def test_measure_latency_quantiles(backend, clock):
    space = _small_space()
    arch = space.search_space.largest()
    model = EvoNetForImageClassification(space.search_space.to_config(arch)).train()
    settings = LatencySettings(backend=backend, batch_size=2, clock=clock, **FAST)
    measured = measure_latency(model, arch["resolution"], settings)
    assert isinstance(measured, LatencyMeasurement)
    assert 0 < measured.q1_ms <= measured.median_ms <= measured.q3_ms
    assert measured.iqr_ms == pytest.approx(measured.q3_ms - measured.q1_ms)
    assert measured.repeats == 5
    assert measured.fingerprint == device_fingerprint(settings)
    assert model.training  # restored
    assert LatencyMeasurement.from_dict(json.loads(json.dumps(measured.to_dict()))) == measured


def test_measure_latency_rejects_bad_input():
    model = EvoNetForImageClassification(_small_space().search_space.to_config(_small_space().search_space.smallest()))
    with pytest.raises(ValueError, match="resolution = 0 is invalid"):
        measure_latency(model, 0, LatencySettings(**FAST))
    with pytest.raises(ValueError, match="latency.repeats"):
        measure_latency(model, 8, LatencySettings(repeats=0))

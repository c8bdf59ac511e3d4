"""Latency relative to an in-process reference network (`evonets.deploy.reference`, `evonets.deploy.latency`): the
fixed reference, per-round normalisation that cancels a process's slowdown, the long-run calibration cached per
device fingerprint, re-measurement and flags for unsteady or contended measurements, the look-up table's exact
rescaling, and the search run pinning its reference milliseconds. No timing thresholds: contention is created for
real (more busy processes than cores) and only the CPU share it leaves, far below the limit, is asserted."""

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import evonets.deploy.latency as latency_module
from evonets import EvoNetForImageClassification, EvoNetSupernetConfig
from evonets.deploy.fingerprint import device_fingerprint, fingerprint_key
from evonets.deploy.latency import (
    CALIBRATION_FORMAT,
    LatencySettings,
    _summarise,
    measure_latency,
    reference_latency_ms,
    time_modules,
)
from evonets.deploy.reference import CACHE_ENV, REFERENCE_ID, reference_input, reference_network
from search.latency_table import LatencyTable

FAST = {"warmup": 1, "repeats": 6, "num_threads": 1}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private calibration cache: calibrations of other tests and of the user's machine are not seen."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def _tiny_network() -> EvoNetForImageClassification:
    space = EvoNetSupernetConfig.tiny(num_labels=10).search_space
    return EvoNetForImageClassification(space.to_config(space.smallest()))


# The reference ------------------------------------------------------------------------------------------------------


def test_reference_network_is_fixed_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first, second = reference_network(), reference_network()
    assert torch.equal(torch.get_rng_state(), state)
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name
    assert not first.training
    assert torch.equal(reference_input(), reference_input()) and reference_input().shape == (1, 3, 32, 32)


def test_fingerprint_names_the_reference_only_when_timing_against_it():
    assert device_fingerprint(LatencySettings(**FAST))["reference"] == REFERENCE_ID
    assert device_fingerprint(LatencySettings(reference=False, **FAST))["reference"] is None


# Normalisation ------------------------------------------------------------------------------------------------------


def test_a_slowdown_shared_with_the_reference_cancels_out():
    # Round 2 runs twice as slow as round 1 (the core slowed down): the target's raw times spread, its ratio to the
    # reference does not.
    target = [[0.002, 0.002, 0.002], [0.004, 0.004, 0.004]]
    reference = [[0.001, 0.001], [0.002, 0.002]]
    (measured,) = _summarise([target, reference], reference_ms=0.5, cpu_share=1.0, fingerprint={})
    assert measured.ratio == pytest.approx(2.0)
    assert measured.spread == pytest.approx(0.0)
    assert measured.median_ms == pytest.approx(1.0) and measured.iqr_ms == pytest.approx(0.0)
    assert measured.raw_median_ms == pytest.approx(3.0)  # the clock's own figure is kept beside it
    (plain,) = _summarise([target], reference_ms=None, cpu_share=1.0, fingerprint={})
    assert plain.ratio is None and plain.reference_ms is None
    assert plain.median_ms == pytest.approx(3.0) and plain.spread == pytest.approx(
        1 / 3
    )  # per-round medians 2 and 4 ms


def test_measurement_is_expressed_in_the_given_reference_milliseconds():
    model = _tiny_network()
    settings = LatencySettings(reference_ms=2.0, **FAST)
    measured = measure_latency(model, 8, settings)
    assert measured.reference_ms == 2.0 and measured.ratio > 0
    assert measured.median_ms == pytest.approx(2.0 * measured.ratio, rel=0.5)  # median of per-call vs per-round ratios
    assert 0 < measured.cpu_share <= 1 and measured.spread >= 0 and measured.attempts >= 1
    assert measured.fingerprint["reference"] == REFERENCE_ID


# Calibration --------------------------------------------------------------------------------------------------------


def test_calibration_runs_in_fresh_processes_and_is_cached_per_fingerprint(cache):
    settings = LatencySettings(reference_processes=2, **FAST)
    value = reference_latency_ms(settings)
    (path,) = cache.glob("reference-*.json")
    assert path.name == f"reference-{fingerprint_key(device_fingerprint(settings))}.json"
    calibration = json.loads(path.read_text())
    assert calibration["format"] == CALIBRATION_FORMAT and calibration["reference_ms"] == value > 0
    assert len(calibration["processes"]) == 2
    assert all(0 < run["cpu_share"] <= 1 and run["median_ms"] > 0 for run in calibration["processes"])
    assert calibration["fingerprint"]["reference"] == REFERENCE_ID
    # The cached value is what later measurements use (no new calibration: it would not give exactly 123.0).
    path.write_text(json.dumps({**calibration, "reference_ms": 123.0}))
    assert reference_latency_ms(settings) == 123.0
    # A calibration of another device or reference is not reused.
    path.write_text(json.dumps({**calibration, "fingerprint": {**calibration["fingerprint"], "cpu": "other"}}))
    assert reference_latency_ms(settings) != 123.0
    assert reference_latency_ms(LatencySettings(reference_ms=7.5, **FAST)) == 7.5


def test_a_failed_calibration_says_why(cache, monkeypatch):
    monkeypatch.setattr(latency_module, "_CALIBRATION_SCRIPT", "raise SystemExit('no reference here')")
    with pytest.raises(RuntimeError, match="no reference here"):
        reference_latency_ms(LatencySettings(reference_processes=1, **FAST))
    assert not list(cache.glob("reference-*.json"))


# Unsteady and contended measurements ----------------------------------------------------------------------------


def test_unsteady_measurements_are_repeated_then_flagged(monkeypatch, caplog):
    steady = [[[0.002, 0.002]] * 4, [[0.001, 0.001]] * 4]
    unsteady = [[[0.002], [0.004], [0.002], [0.008]], [[0.001]] * 4]  # per-round ratios 2, 4, 2, 8
    attempts = iter([(unsteady, 1.0), (steady, 1.0)])
    monkeypatch.setattr(latency_module, "_time", lambda *args: next(attempts))
    (measured,) = time_modules([(torch.nn.Identity(), (1, 3))], LatencySettings(reference_ms=1.0, **FAST), 4)
    assert measured.attempts == 2 and measured.stable and measured.ratio == pytest.approx(2.0)

    attempts = iter([(unsteady, 1.0), (steady, 0.5), (unsteady, 1.0)])  # the steady one was contended
    monkeypatch.setattr(latency_module, "_time", lambda *args: next(attempts))
    with caplog.at_level(logging.WARNING, logger="evonets.deploy.latency"):
        (measured,) = time_modules([(torch.nn.Identity(), (1, 3))], LatencySettings(reference_ms=1.0, **FAST), 4)
    assert measured.attempts == 3 and not measured.stable
    assert measured.ratio == pytest.approx(2.0)  # the steadiest attempt is kept
    assert "flagged stable=False" in caplog.text


def test_real_contention_is_detected():
    # More busy processes than cores: this process gets its core for well under the 95 % asked for.
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range((os.cpu_count() or 1) + 1)]
    try:
        settings = LatencySettings(reference_ms=1.0, min_cpu_share=0.95, retries=1, **FAST)
        measured = measure_latency(_tiny_network(), 8, settings)
    finally:
        for process in busy:
            process.kill()
            process.wait()
    assert measured.cpu_share < 0.95
    assert measured.attempts == 2 and not measured.stable


# The look-up table and the search run ------------------------------------------------------------------------------


def test_table_rescales_exactly_to_other_reference_milliseconds():
    space = EvoNetSupernetConfig.tiny(
        resolution_choices=[8],
        depth_choices=[[1], [1]],
        width_choices=[[8], [16]],
        block_type_choices=[["conv"], ["conv"]],
        num_heads_choices=[[1], [1]],
        num_labels=10,
    )
    table = LatencyTable.build(space, LatencySettings(reference_ms=1.0, **FAST), progress=False, calibration_networks=2)
    arch = space.search_space.largest()
    before = table.predict_ms(arch)
    table.rescale(3.0)
    assert table.reference_ms == 3.0
    assert table.predict_ms(arch) == pytest.approx(3.0 * before)
    plain = LatencyTable(space, {}, {}, reference_ms=None)
    with pytest.raises(ValueError, match="without the reference"):
        plain.rescale(2.0)


def test_settings_reject_bad_reference_fields():
    for name, value in [
        ("reference", "yes"),
        ("reference_ms", 0),
        ("reference_ms", float("nan")),
        ("reference_processes", 0),
        ("max_spread", -1),
        ("min_cpu_share", 1.5),
        ("retries", -1),
    ]:
        with pytest.raises(ValueError, match=f"latency.{name}"):
            LatencySettings(**{name: value}).validate()


def test_calibration_is_the_median_of_its_processes(cache, monkeypatch):
    runs = iter(
        [
            {"median_ms": 1.0, "cpu_share": 1.0, "stable": True},
            {"median_ms": 3.0, "cpu_share": 1.0, "stable": True},
            {"median_ms": 2.0, "cpu_share": 0.99, "stable": True},
        ]
    )
    monkeypatch.setattr(latency_module, "_calibrate_in_fresh_process", lambda settings: next(runs))
    assert reference_latency_ms(LatencySettings(**FAST)) == 2.0
    (path,) = cache.glob("reference-*.json")
    assert json.loads(path.read_text())["spread"] == pytest.approx(1.0)
    assert np.isclose(reference_latency_ms(LatencySettings(**FAST)), 2.0)

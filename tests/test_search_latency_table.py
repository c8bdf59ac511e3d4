"""The per-block latency look-up table of a search space (`search.latency_table`): entries, prediction, calibration,
files, and its error against measurement (no timing thresholds: the machine is shared, so only orderings that hold by a
wide margin are asserted)."""

import itertools
import json
import logging
import random
import statistics

import numpy as np
import pytest

from evonets import EvoNetSupernet, EvoNetSupernetConfig
from evonets.deploy.fingerprint import device_fingerprint
from evonets.deploy.latency import LatencySettings
from search.latency_table import (
    Calibration,
    LatencyTable,
    block_variants,
    lut_error,
    measure_architecture,
    space_config_hash,
)

FAST = {"warmup": 1, "repeats": 5, "num_threads": 1}


pytestmark = pytest.mark.usefixtures("one_thread")


def _small_space(**kwargs) -> EvoNetSupernetConfig:
    """Two stages, 720 networks (2 304 gene combinations): SS2D, SSD and conv blocks (d_state 2 or 4) in stage 0,
    conv and attention (1 or 2 heads) in stage 1, at 8 and 16 px. Stage 0 at 8 px and stage 1 at 16 px both have 4x4
    tokens and can be 16 wide, so their conv blocks are one entry."""
    space = {
        "resolution_choices": [8, 16],
        "depth_choices": [[1, 2], [1]],
        "width_choices": [[8, 16], [16, 24]],
        "block_type_choices": [["conv", "ss2d", "ssd"], ["conv", "attention"]],
        "mlp_ratio_choices": [2.0],
        "d_state_choices": [2, 4],
        "ssm_ratio_choices": [1.0],
        "num_heads_choices": [[1], [1, 2]],
        "num_labels": 10,
    }
    space.update(kwargs)
    return EvoNetSupernetConfig.tiny(**space)


def _all_architectures(space_config: EvoNetSupernetConfig) -> list[dict]:
    """Every distinct network of the space, from the product of all gene choices."""
    space = space_config.search_space
    genes = space.genes
    archs = {}
    for values in itertools.product(*(gene.choices for gene in genes)):
        arch = space.validate(space.from_genes({gene.name: value for gene, value in zip(genes, values)}))
        archs[space.encode(arch)] = arch
    return list(archs.values())


@pytest.fixture(scope="module")
def small_table() -> LatencyTable:
    return LatencyTable.build(_small_space(), LatencySettings(**FAST), progress=False, calibration_networks=3)


# Space identity and measurement ---------------------------------------------------------------------------------------


def test_space_config_hash_follows_the_networks_not_the_bookkeeping():
    space = _small_space()
    assert space_config_hash(_small_space()) == space_config_hash(space)
    assert space_config_hash(EvoNetSupernetConfig.from_dict(space.to_dict())) == space_config_hash(space)
    assert space_config_hash(_small_space(d_state_choices=[2, 8])) != space_config_hash(space)
    assert space_config_hash(_small_space(num_labels=5)) != space_config_hash(space)


def test_measure_architecture_times_the_extracted_network():
    supernet = EvoNetSupernet(_small_space()).eval()
    encoding = supernet.search_space.encode(supernet.search_space.smallest())
    measured = measure_architecture(supernet, encoding, LatencySettings(**FAST))
    assert 0 < measured.q1_ms <= measured.median_ms <= measured.q3_ms


# Look-up table ------------------------------------------------------------------------------------------------------


def test_block_variants_enumerate_types_and_sizes():
    space = _small_space().search_space
    assert block_variants(space, 0) == [
        {"type": "ss2d", "mlp_ratio": 2.0, "d_state": 2, "ssm_ratio": 1.0},
        {"type": "ss2d", "mlp_ratio": 2.0, "d_state": 4, "ssm_ratio": 1.0},
        {"type": "ssd", "mlp_ratio": 2.0, "d_state": 2, "ssm_ratio": 1.0, "num_heads": 1},
        {"type": "ssd", "mlp_ratio": 2.0, "d_state": 4, "ssm_ratio": 1.0, "num_heads": 1},
        {"type": "conv", "mlp_ratio": 2.0},
    ]
    assert [variant["type"] for variant in block_variants(space, 1)] == ["attention", "attention", "conv"]


def test_table_has_an_entry_for_every_reachable_part_and_no_other(small_table):
    archs = _all_architectures(small_table.space_config)
    assert len(archs) == small_table.space.cardinality()
    used = {key for arch in archs for key, _ in small_table.breakdown(arch)}
    assert used == set(small_table.entries)
    # 4 stems, 8 downsamples, 20 + 12 blocks less the conv block shared by stage 0 at 8 px and stage 1 at 16 px, 4 heads
    assert len(small_table.entries) == 4 + 8 + 31 + 4
    kinds = sorted({key.split()[0] for key in small_table.entries})
    assert kinds == ["block", "downsample", "head", "stem"]
    assert all(entry.median_ms > 0 and entry.iqr_ms >= 0 for entry in small_table.entries.values())


def test_prediction_follows_the_architecture(small_table):
    space = small_table.space
    smallest, largest = space.smallest(), space.largest("ss2d")  # SS2D blocks where allowed, conv elsewhere
    keys = [key for key, _ in small_table.breakdown(largest)]
    assert [key.split()[0] for key in keys] == ["stem", "block", "block", "downsample", "block", "head"]
    assert keys[1] == "block 8x8 w16 ss2d mlp_ratio=2 d_state=4 ssm_ratio=1"
    # Two SS2D blocks at 8x8 tokens and a conv block against two conv blocks at 4x4 and 2x2: a wide margin.
    assert small_table.predict_ms(largest) > 1.5 * small_table.predict_ms(smallest)
    predictions = [small_table.predict_ms(arch) for arch in _all_architectures(small_table.space_config)]
    assert min(predictions) > 0
    assert small_table.predict_ms(space.encode(largest)) == small_table.predict_ms(largest)
    assert small_table.calibration.scale > 0 and len(small_table.calibration.networks) == 3


def test_prediction_rejects_architectures_of_another_space(small_table):
    other = _small_space(width_choices=[[8, 32], [16, 24]]).search_space
    with pytest.raises(ValueError, match=r"stages\[0\].width = 32 is invalid"):
        small_table.predict_ms(other.largest())


def test_calibration_fit_recovers_a_line_despite_one_disturbed_network():
    sums = np.array([0.5, 1.0, 2.0, 3.0, 5.0, 8.0])
    networks = [{"encoding": str(s), "sum_ms": s, "measured_ms": 1.25 * s + 0.3} for s in sums]
    exact = Calibration.fit(networks)
    assert exact.scale == pytest.approx(1.25, rel=1e-4) and exact.offset_ms == pytest.approx(0.3, abs=1e-4)
    networks[3]["measured_ms"] *= 3  # timed during a burst of load
    robust = Calibration.fit(networks)
    assert robust.scale == pytest.approx(1.25, rel=0.05) and robust.offset_ms == pytest.approx(0.3, abs=0.05)


def test_save_load_round_trip(small_table, tmp_path):
    path = tmp_path / "latency.json"
    small_table.save(path)
    loaded = LatencyTable.load(path)
    assert loaded.entries == small_table.entries
    assert loaded.fingerprint == small_table.fingerprint and loaded.fingerprint_key == small_table.fingerprint_key
    assert loaded.space_hash == small_table.space_hash
    assert loaded.calibration == small_table.calibration
    rng = random.Random(1)
    for arch in (small_table.space.sample(rng) for _ in range(10)):
        assert loaded.predict_ms(arch) == small_table.predict_ms(arch)
    data = json.loads(path.read_text())
    assert data["fingerprint_key"] == small_table.fingerprint_key and len(data["entries"]) == 47
    data["space_config"]["d_state_choices"] = [[2, 8], [2, 8]]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="recorded hash"):
        LatencyTable.load(path)
    path.write_text(json.dumps({"entries": {}}))
    with pytest.raises(ValueError, match="not an evonets latency table"):
        LatencyTable.load(path)


def test_load_or_build_reuses_or_rebuilds(small_table, tmp_path, monkeypatch, caplog):
    builds = []
    real_build = LatencyTable.build.__func__

    def counting_build(cls, space_config, settings, progress=True):
        builds.append(settings)
        return real_build(cls, space_config, settings, progress=progress, calibration_networks=2)

    monkeypatch.setattr(LatencyTable, "build", classmethod(counting_build))
    path = tmp_path / "latency.json"
    small_table.save(path)
    space = _small_space()

    same = LatencyTable.load_or_build(path, space, LatencySettings(**FAST), progress=False)
    assert builds == [] and same.entries == small_table.entries

    caplog.set_level(logging.WARNING, logger="search.latency_table")
    batch_two = LatencySettings(batch_size=2, **FAST)
    rebuilt = LatencyTable.load_or_build(path, space, batch_two, progress=False)
    assert len(builds) == 1 and rebuilt.fingerprint["batch_size"] == 2
    assert "fingerprint changed (batch_size 1 -> 2)" in caplog.text
    assert LatencyTable.load(path).fingerprint == device_fingerprint(batch_two)

    other_space = _small_space(resolution_choices=[8])
    LatencyTable.load_or_build(path, other_space, batch_two, progress=False)
    assert len(builds) == 2 and "another search space" in caplog.text
    assert LatencyTable.load(path).space_hash == space_config_hash(other_space)


def test_lut_error_reports_relative_errors(small_table):
    supernet = EvoNetSupernet(_small_space()).eval()
    report = lut_error(supernet, small_table, LatencySettings(**FAST), count=4, seed=3, progress=False)
    rows = report["rows"]
    assert len(rows) == report["count"] == 4
    rng = random.Random(3)
    assert [row["encoding"] for row in rows] == [
        supernet.search_space.encode(supernet.search_space.sample(rng)) for _ in range(4)
    ]
    for row in rows:
        assert row["measured_ms"] > 0 and row["predicted_ms"] == small_table.predict_ms(row["encoding"])
        assert row["error"] == pytest.approx((row["predicted_ms"] - row["measured_ms"]) / row["measured_ms"])
    errors = [abs(row["error"]) for row in rows]
    assert report["median_abs_error"] == pytest.approx(statistics.median(errors))
    assert report["mean_abs_error"] == pytest.approx(statistics.mean(errors))
    assert max(errors) >= report["p90_abs_error"] >= report["median_abs_error"]
    with pytest.raises(ValueError, match="fingerprint changed"):
        lut_error(supernet, small_table, LatencySettings(batch_size=2, **FAST), count=1, progress=False)


def test_onnxruntime_table_times_exported_parts():
    """Every part exported to ONNX and timed in onnxruntime (a few tenths of a second of export and session per
    entry, so a smaller space)."""
    space = _small_space(resolution_choices=[8], width_choices=[[8], [16]])
    settings = LatencySettings(backend="onnxruntime", **FAST)
    table = LatencyTable.build(space, settings, progress=False, calibration_networks=2)
    assert table.fingerprint["backend"] == "onnxruntime" and table.fingerprint["scan_backend"] == "torch"
    archs = _all_architectures(space)
    assert {key for arch in archs for key, _ in table.breakdown(arch)} == set(table.entries)
    assert table.predict_ms(space.search_space.largest("ss2d")) > table.predict_ms(space.search_space.smallest()) > 0

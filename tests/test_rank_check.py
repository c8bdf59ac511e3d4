"""search/rank_check.py: the CLI end to end on a tiny random supernet, its errors, the rankings, the data split."""

import json

import pytest
import torch

from evonets.data.config import DataConfig
from search.rank_check import RankCheckConfig, main, resolve_data_config
from search.ranking import ranking_scores, seed_ceiling

FAST = ["--standalone.steps", "3", "--standalone.warmup_steps", "1", "--standalone_seeds", "2", "--top_k", "2"]


@pytest.fixture(scope="module")
def supernet_dir(tmp_path_factory):
    from evonets.models.search_space import EvoNetSupernetConfig
    from evonets.models.supernet import EvoNetSupernet

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("supernet")
    EvoNetSupernet(EvoNetSupernetConfig.tiny(num_labels=10, resolution_choices=[8, 16])).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def cli_run(supernet_dir, tmp_path_factory):
    """One CLI run (n = 4, 2 seeds) with the test split removed from the digits data and every scored batch recorded."""
    import evonets.data.digits
    import evonets.engine.evaluation
    import search.ranking

    output_dir = tmp_path_factory.mktemp("rank_check")
    load_digits = evonets.data.digits.load_digits_dataset
    evaluate = evonets.engine.evaluation.evaluate
    scored = []

    def without_test_split(*args, **kwargs):
        splits = load_digits(*args, **kwargs)
        del splits["test"]  # reading it would now fail
        return splits

    def recording_evaluate(model_fn, batches, resolution=None, **kwargs):
        batches = list(batches)
        pixel_values = torch.cat([batch["pixel_values"] for batch in batches])
        scored.append((pixel_values, torch.cat([batch["labels"] for batch in batches]), resolution))
        return evaluate(model_fn, batches, resolution, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(evonets.data.digits, "load_digits_dataset", without_test_split)
        patch.setattr(search.ranking, "evaluate", recording_evaluate)  # the stand-alone scores
        patch.setattr(evonets.engine.evaluation, "evaluate", recording_evaluate)  # the search's evaluator
        argv = ["--supernet", str(supernet_dir), "--n", "4", "--data.source", "digits", "--progress_bar", "false"]
        report = main(argv + FAST + ["--output_dir", str(output_dir)])
    return report, output_dir, scored


def test_cli_writes_json_markdown_and_scatter(cli_run):
    report, output_dir, _ = cli_run
    written = json.loads((output_dir / "rank_check.json").read_text())
    assert written == json.loads(json.dumps(report))
    assert (output_dir / "rank_check.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (output_dir / "rank_check.md").read_text()
    assert "| fitness |" in markdown and "| loss |" in markdown
    assert len(written["architectures"]) == 4 and len({a["encoding"] for a in written["architectures"]}) == 4
    for ranking in ("fitness", "accuracy", "loss"):
        values = written["correlations"][ranking]
        for key in ("kendall_tau", "spearman_rho", "seed_ceiling"):
            assert -1.0 <= values[key] <= 1.0, (ranking, key, values[key])
        assert 0.0 <= values["top_k_overlap"] <= 1.0 and values["top_k"] == 2
    for entry in written["architectures"]:
        assert len(entry["standalone"]["per_seed"]) == 2 and entry["params"] > 0 and entry["macs"] > 0
        assert 0.0 <= entry["supernet"]["accuracy"] <= 1.0 and entry["supernet"]["loss"] > 0
    assert list(output_dir.glob("standalone_*.json")), "stand-alone results are cached"
    # the per-block-type gap: the mean of (supernet - stand-alone) accuracy over the architectures using that type
    for block_type, values in written["accuracy_gap_by_block_type"].items():
        # every block of an encoding reads "<type>.m<mlp ratio>...": "ssd." and "ss2d." do not overlap
        using = [entry for entry in written["architectures"] if f"{block_type}." in entry["encoding"]]
        gaps = [entry["supernet"]["accuracy"] - entry["standalone"]["accuracy"] for entry in using]
        assert values["n"] == len(gaps) and values["mean_accuracy_gap"] == pytest.approx(sum(gaps) / len(gaps))
    for resolution, values in written["kendall_tau_by_resolution"].items():
        assert values["n"] == sum(entry["resolution"] == int(resolution) for entry in written["architectures"]) >= 3
    assert "block type" in markdown


def test_supernet_scores_come_from_the_validation_split(cli_run):
    from evonets.data.classification import load_data
    from evonets.data.digits import load_digits_dataset
    from search.ranking import validation_tensors

    report, _, scored = cli_run
    validation_pixels, validation_labels = validation_tensors(load_data(DataConfig(source="digits"), image_size=16))
    splits = load_digits_dataset()
    assert report["data"]["validation_examples"] == len(splits["validation"]) == len(validation_labels)
    assert len(splits["validation"]) != len(splits["test"])
    # 4 supernet fitness evaluations, then 4 architectures x 2 seeds of stand-alone training, each scored once.
    assert len(scored) == 4 + 8
    for pixel_values, labels, _ in scored:
        assert torch.equal(labels, validation_labels) and torch.equal(pixel_values, validation_pixels)
    assert [resolution for _, _, resolution in scored[:4]] == [a["resolution"] for a in report["architectures"]]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--n", "1"], "n = 1 is invalid: expected an integer >= 3"),
        (["--n", "0"], "n = 0 is invalid"),
        (["--n", "many"], "n"),
        (["--standalone_seeds", "0"], "standalone_seeds = 0 is invalid"),
        (["--standalone.warmup_steps", "500"], "standalone.warmup_steps = 500 is invalid"),
    ],
)
def test_bad_values_are_clear_errors(supernet_dir, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit):
        main(["--supernet", str(supernet_dir), "--data.source", "digits", "--output_dir", str(tmp_path)] + flags)
    assert message in capsys.readouterr().err
    assert not (tmp_path / "rank_check.json").exists()


def test_more_architectures_than_the_space_has_is_an_error(tmp_path):
    from evonets.models.search_space import EvoNetSupernetConfig
    from evonets.models.supernet import EvoNetSupernet
    from search.rank_check import run

    small = EvoNetSupernetConfig.tiny(
        num_labels=10,
        resolution_choices=[8],
        depth_choices=[[1], [1], [1]],
        width_choices=[[16], [32], [48]],
        block_type_choices=["conv"],
        mlp_ratio_choices=[2.0],
    )
    EvoNetSupernet(small).save_pretrained(tmp_path / "supernet")
    config = RankCheckConfig(supernet=str(tmp_path / "supernet"), n=3, data=DataConfig(), output_dir=str(tmp_path))
    with pytest.raises(ValueError, match="n = 3 is invalid: the supernet's space has only 1 distinct"):
        run(config)


def test_data_config_defaults_to_the_supernets_and_must_keep_its_split(tmp_path):
    distilled = DataConfig(source="digits", validation_split=None, validation_fraction=0.4, image_size=16)
    (tmp_path / "distill_summary.json").write_text(json.dumps({"config": {"data": distilled.__dict__}}))
    assert resolve_data_config(RankCheckConfig(supernet=str(tmp_path))) == distilled
    restated = DataConfig(source="digits", validation_split=None, validation_fraction=0.4, check_samples=0)
    assert resolve_data_config(RankCheckConfig(supernet=str(tmp_path), data=restated)) == restated
    other_split = DataConfig(source="digits")
    with pytest.raises(ValueError, match="data.validation_split = 'validation', data.validation_fraction = 0.1"):
        resolve_data_config(RankCheckConfig(supernet=str(tmp_path), data=other_split))
    (tmp_path / "distill_summary.json").unlink()
    with pytest.raises(ValueError, match="Config field data is missing"):
        resolve_data_config(RankCheckConfig(supernet=str(tmp_path)))


def test_fitness_ranks_by_accuracy_then_loss():
    results = [
        {"accuracy": 0.9, "loss": 0.5},
        {"accuracy": 0.9, "loss": 0.3},  # same accuracy, lower loss: ranks higher
        {"accuracy": 0.95, "loss": 0.9},  # higher accuracy wins whatever the loss
        {"accuracy": 0.8, "loss": 0.1},
    ]
    fitness = ranking_scores(results, "fitness")
    assert sorted(range(4), key=lambda i: -fitness[i]) == [2, 1, 0, 3]
    assert ranking_scores(results, "accuracy")[0] == ranking_scores(results, "accuracy")[1]  # a tie
    assert ranking_scores(results, "loss") == [-0.5, -0.3, -0.9, -0.1]
    with pytest.raises(ValueError, match="ranking = 'error' is invalid"):
        ranking_scores(results, "error")


def test_seed_ceiling_averages_every_pair_of_seeds():
    # Seeds 0 and 1 agree perfectly; seed 2 reverses them: taus 1, -1, -1 -> mean -1/3.
    standalone = [
        {"per_seed": [{"accuracy": a, "loss": 0.0}, {"accuracy": a, "loss": 0.0}, {"accuracy": 1 - a, "loss": 0.0}]}
        for a in (0.1, 0.2, 0.3, 0.4)
    ]
    assert seed_ceiling(standalone, "accuracy") == pytest.approx(-1 / 3)
    assert seed_ceiling([{"per_seed": [{"accuracy": 1.0, "loss": 0.0}]}] * 3, "accuracy") is None


@pytest.mark.slow
def test_worker_processes_give_the_same_results_as_one_process(supernet_dir, tmp_path):
    from search.rank_check import run

    reports = {}
    for workers in (1, 2):
        config = RankCheckConfig(
            supernet=str(supernet_dir),
            n=3,
            data=DataConfig(source="digits"),
            output_dir=str(tmp_path / f"workers{workers}"),
            workers=workers,
            progress_bar=False,
        )
        config.standalone.steps, config.standalone.warmup_steps = 4, 1
        reports[workers] = run(config)
    for one, two in zip(reports[1]["architectures"], reports[2]["architectures"]):
        assert one["encoding"] == two["encoding"]
        for a, b in zip(one["standalone"]["per_seed"], two["standalone"]["per_seed"]):
            assert a == pytest.approx(b, rel=1e-5)

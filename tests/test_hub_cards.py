"""hub_cards: cards built from a real run folder, push through a fake Hub at the HTTP layer, ONNX export checked in
onnxruntime, and the published files loading with and without evonets.

The run folder is the README's quickstart pipeline (`configs/quickstart.yaml`: teacher, CA-DDKD distillation,
search, front models), shortened to a few CPU seconds: the cards are checked against the files that run wrote, not
against numbers typed here. No Hub server is reachable, so `push` runs the real `HfApi` code over an
`httpx.MockTransport` (`huggingface_hub.set_client_factory`) that answers like the Hub's API and records every
request: the tests assert the exact calls and the exact files of the commit payload.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import save_file

import evonets
from hub_cards.__main__ import main as cli
from hub_cards.push import model_files, supernet_files

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GOLD = np.array([1.0, 215 / 255, 0.0])  # matplotlib's "gold": the star that marks a card's model


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
    """The quickstart pipeline (one config, one command), shortened: 1 teacher epoch, 6 distillation steps, 6
    search candidates each timed for real (no look-up table to build)."""
    root = tmp_path_factory.mktemp("quickstart")
    command = [sys.executable, str(REPO / "search" / "run.py"), "--config", str(REPO / "configs" / "quickstart.yaml"),
               "--distill.teacher.path", str(root / "teacher"),
               "--distill.teacher.train.epochs", "1",
               "--distill.trainer.output_dir", str(root / "distill"),
               "--distill.trainer.max_steps", "6",
               "--distill.trainer.warmup_steps", "1",
               "--distill.trainer.eval_every", "6",
               "--distill.trainer.save_every", "6",
               "--distill.trainer.progress_bar", "false",
               "--output_dir", str(root / "search"),
               "--search.budget", "6",
               "--fitness.cache_dir", "null",
               "--latency.mode", "measure",
               "--latency.warmup", "2",
               "--latency.repeats", "5",
               "--pool.workers", "1",
               "--progress_bar", "false"]  # fmt: skip
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert len(json.loads((root / "search" / "pareto.json").read_text())["front"]) >= 2
    return root


def _copy_run(quickstart_run, destination) -> Path:
    """A copy of the run folder to write cards into (its run.json still points at the supernet it searched)."""
    return Path(shutil.copytree(quickstart_run / "search", destination / "search"))


@pytest.fixture(scope="module")
def built_run(quickstart_run, tmp_path_factory):
    """A copy of the run with every card built by the command line."""
    run_dir = _copy_run(quickstart_run, tmp_path_factory.mktemp("built"))
    cli(["build", str(run_dir)])
    return run_dir


@pytest.fixture
def run_dir(quickstart_run, tmp_path):
    return _copy_run(quickstart_run, tmp_path)


def _pareto(run_dir) -> dict:
    return json.loads((Path(run_dir) / "pareto.json").read_text())


def _digit_images(count: int) -> list[Image.Image]:
    """Real handwritten digits from the validation split, as RGB images."""
    from evonets.data.digits import load_digits_dataset

    return [image.convert("RGB") for image in load_digits_dataset(seed=0)["validation"]["image"][:count]]


def _gold_pixels(path) -> int:
    import matplotlib.image

    pixels = matplotlib.image.imread(str(path))[..., :3]
    return int((np.abs(pixels - GOLD).max(axis=-1) < 0.02).sum())


def _python_blocks(text: str, section: str) -> list[str]:
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, flags=re.DOTALL)


# Cards ---------------------------------------------------------------------------------------------------------


def test_build_writes_a_card_per_front_member_from_the_run_folder(built_run):
    pareto = _pareto(built_run)
    check = json.loads((built_run / "standalone_check.json").read_text())
    assert _gold_pixels(built_run / "pareto.png") == 0  # the run's own plot has no star
    stars = {}
    for member in pareto["front"]:
        folder = built_run / "models" / member["hash"]
        card = ModelCard.load(folder / "README.md")
        assert card.data.library_name == "transformers" and card.data.license == "apache-2.0"
        assert card.data.pipeline_tag == "image-classification" and "custom_code" in card.data.tags

        # model-index parses back with the run's numbers, not re-typed ones
        results = {(r.dataset_split, r.metric_type): r for r in card.data.eval_results}
        validation = results.pop(("validation", "accuracy"))
        assert validation.metric_value == member["metrics"]["accuracy"]
        assert validation.task_type == "image-classification" and validation.dataset_name == "scikit-learn digits"
        if Path(check["folder"]).name == member["hash"]:
            assert results.pop(("test", "accuracy")).metric_value == check["test_accuracy"]
        assert not results, "a test accuracy is only claimed for the member the stand-alone check tested"

        # the plot: present, referenced, this model starred
        assert (folder / "pareto.png").read_bytes()[:8] == PNG_MAGIC
        assert "](pareto.png)" in card.text
        stars[member["hash"]] = _gold_pixels(folder / "pareto.png")
        assert stars[member["hash"]] > 20

        text = card.text
        assert member["encoding"] in text and f"{member['metrics']['params']:,}" in text
        assert f"{member['metrics']['macs']:,}" in text
        assert f"{member['latency']['ms']:.3f} ms" in text and member["latency"]["fingerprint"] in text
        fingerprint = pareto["latency_fingerprint"]
        assert f"| cpu | {fingerprint['cpu']} |" in text and f"| num_threads | {fingerprint['num_threads']} |" in text
        assert "ConvNextV2ForImageClassification" in text and "**steps**: 6 optimizer steps of batch 64" in text
        assert "Not measured: no `rank_check.json`" in text
        assert "ONNX Runtime latency | not measured" in text

        # the per-stage table is the config's
        config = evonets.EvoNetConfig.from_pretrained(folder)
        rows = re.findall(r"^\| (stage\d) \| (\d+)×\d+ \| (\d+) \| (\d+) \| (.+) \|$", text, flags=re.MULTILINE)
        assert [row[0] for row in rows] == config.stage_names[1:]
        for stage, (_, tokens, depth, width, blocks) in enumerate(rows):
            assert int(tokens) == config.image_size // (config.patch_size * 2**stage)
            assert (int(depth), int(width)) == (config.depths[stage], config.hidden_sizes[stage])
            blocks = re.findall(r"(\w+) \(([^)]*)\)", blocks)
            assert len(blocks) == config.depths[stage]
            for index, (block_type, sizes) in enumerate(blocks):
                args = config.block_args(stage, index)
                assert block_type == args["block_type"]
                for size in sizes.split(", "):
                    name, value = size.split(" ")
                    assert float(value) == args[name], (stage, index, name)
    plots = {(built_run / "models" / name / "pareto.png").read_bytes() for name in stars}
    assert len(plots) == len(stars), "each card's plot stars its own model"

    supernet = ModelCard.load(built_run / "supernet_card" / "README.md")
    summary = json.loads((Path(pareto["supernet"]) / "distill_summary.json").read_text())
    (largest,) = supernet.data.eval_results
    assert largest.metric_value == summary["val_accuracy"]["largest"] and largest.dataset_split == "validation"
    space = evonets.EvoNetSupernetConfig.from_pretrained(pareto["supernet"]).search_space
    assert f"{space.cardinality():,} distinct networks" in supernet.text
    assert all(f"`{member['encoding']}`" in supernet.text for member in pareto["front"])
    assert (built_run / "supernet_card" / "pareto.png").read_bytes() == (built_run / "pareto.png").read_bytes()


def test_card_snippets_load_the_model(built_run, tmp_path, monkeypatch):
    """The card's "How to use" code runs as written (the repository is the local folder before a push)."""
    check = json.loads((built_run / "standalone_check.json").read_text())
    folder = built_run / "models" / Path(check["folder"]).name
    text = (folder / "README.md").read_text()
    image = _digit_images(1)[0]
    image.save(tmp_path / "image.png")
    monkeypatch.chdir(tmp_path)
    runnable = [block for block in _python_blocks(text, "How to use") if "train_dataset" not in block]
    assert len(runnable) == 3  # pipeline; evonets classes; extraction from the supernet
    output = io.StringIO()
    namespace: dict = {}
    with contextlib.redirect_stdout(output):
        for block in runnable:
            exec(block, namespace)  # noqa: S102 - the card's own snippets
    model = evonets.EvoNetForImageClassification.from_pretrained(folder).eval()
    processor = evonets.EvoNetImageProcessor.from_pretrained(folder)
    with torch.no_grad():
        logits = model(processor(image, return_tensors="pt")["pixel_values"]).logits
    assert f"'label': '{model.config.id2label[int(logits.argmax())]}'" in output.getvalue().splitlines()[0]
    pixel_values = torch.randn(2, 3, model.config.image_size, model.config.image_size)
    with torch.no_grad():  # the snippet's extraction from the supernet is the published network
        torch.testing.assert_close(namespace["model"](pixel_values).logits, model(pixel_values).logits)
    assert isinstance(namespace["features"], evonets.EvoNetModel)
    assert len(namespace["backbone"].config.out_features) == model.config.num_stages


@pytest.mark.slow
def test_rank_check_is_found_beside_the_run_or_given(run_dir, tmp_path):
    from search.rank_check import main as rank_check

    supernet = _pareto(run_dir)["supernet"]
    fast = ["--n", "3", "--standalone.steps", "3", "--standalone.warmup_steps", "1", "--standalone_seeds", "2",
            "--top_k", "2", "--progress_bar", "false"]  # fmt: skip
    report = rank_check(["--supernet", supernet, "--output_dir", str(run_dir), *fast])
    tau = report["correlations"]["fitness"]["kendall_tau"]
    member = _pareto(run_dir)["front"][0]["hash"]

    cli(["build", str(run_dir), "--model", member, "--no-supernet-card"])
    text = (run_dir / "models" / member / "README.md").read_text()
    assert f"| {tau:.2f} |" in text and "Not measured" not in text and "Measured on another supernet" not in text

    moved = tmp_path / "elsewhere"
    moved.mkdir()
    (run_dir / "rank_check.json").rename(moved / "rank_check.json")
    cli(["build", str(run_dir), "--model", member, "--no-supernet-card"])
    assert "Not measured: no `rank_check.json`" in (run_dir / "models" / member / "README.md").read_text()
    cli(["build", str(run_dir), "--model", member, "--no-supernet-card", "--rank-check", str(moved)])
    assert f"| {tau:.2f} |" in (run_dir / "models" / member / "README.md").read_text()

    # beside the run but about another supernet: not taken unless given explicitly, and then labelled so
    other = json.loads((moved / "rank_check.json").read_text()) | {"supernet": str(tmp_path / "other_supernet")}
    (run_dir / "rank_check.json").write_text(json.dumps(other))
    cli(["build", str(run_dir), "--model", member, "--no-supernet-card"])
    assert "Not measured" in (run_dir / "models" / member / "README.md").read_text()
    cli(["build", str(run_dir), "--model", member, "--no-supernet-card", "--rank-check", str(run_dir)])
    assert "Measured on another supernet" in (run_dir / "models" / member / "README.md").read_text()


def test_bad_input_is_a_clear_error(built_run):
    with pytest.raises(SystemExit, match=r"--model 'ffffffffffff' is not on the Pareto front .* expected one of"):
        cli(["build", str(built_run), "--model", "ffffffffffff"])
    with pytest.raises(SystemExit, match="not a search run folder: it has no run.json"):
        cli(["build", str(built_run / "models")])
    with pytest.raises(SystemExit, match="--repo-id 'org/name' names one repository.*give --model HASH"):
        cli(["build", str(built_run), "--repo-id", "org/name"])
    with pytest.raises(SystemExit, match="--rank-check .* is not a rank_check.json"):
        cli(["build", str(built_run), "--rank-check", str(built_run / "nowhere.json")])


def test_a_model_dir_outside_the_run_folder_is_refused(run_dir, tmp_path):
    """A `pareto.json` whose `model_dir` points out of the run folder (an absolute path, as an edited or crafted file
    may hold) is refused before anything is written: the card would have gone into that folder."""
    pareto = _pareto(run_dir)
    member = pareto["front"][0]
    elsewhere = Path(shutil.copytree(run_dir / member["model_dir"], tmp_path / "elsewhere"))
    before = sorted(path.name for path in elsewhere.iterdir())
    member["model_dir"] = str(elsewhere)
    (run_dir / "pareto.json").write_text(json.dumps(pareto))
    with pytest.raises(SystemExit, match=rf"pareto.json: front member field 'model_dir' of {member['hash']} .*outside"):
        cli(["build", str(run_dir)])
    assert sorted(path.name for path in elsewhere.iterdir()) == before and "README.md" not in before


# Push through a fake Hub ---------------------------------------------------------------------------------------


class FakeHub:
    """The Hub's HTTP API as far as `create_repo`, `create_branch` and `create_commit` use it (legacy LFS path):
    records every request, says binary files go to LFS (and are already stored, so nothing is uploaded), and
    keeps the commit's ndjson payload."""

    LFS_SUFFIXES = (".safetensors", ".onnx", ".png")

    def __init__(self, httpx):
        self.httpx = httpx
        self.requests: list[tuple[str, str, dict | bytes]] = []
        self.commits: list[dict] = []

    def handle(self, request):
        httpx = self.httpx
        path, body = request.url.path, request.read()
        self.requests.append((request.method, path, request.headers.get("authorization")))
        if path == "/api/repos/create":
            payload = json.loads(body)
            self.created = payload
            return httpx.Response(
                200, json={"url": f"https://huggingface.co/{payload['organization']}/{payload['name']}"}
            )
        if path == "/api/validate-yaml":
            return httpx.Response(200, json={"errors": [], "warnings": []})
        if re.fullmatch(r"/api/models/[^/]+/[^/]+/branch/[^/]+", path):
            return httpx.Response(200, json={})
        if re.fullmatch(r"/api/models/[^/]+/[^/]+/preupload/[^/]+", path):
            files = json.loads(body)["files"]
            modes = [
                {"path": f["path"], "uploadMode": "lfs" if f["path"].endswith(self.LFS_SUFFIXES) else "regular",
                 "shouldIgnore": False}
                for f in files
            ]  # fmt: skip
            return httpx.Response(200, json={"files": modes})
        if path.endswith(".git/info/lfs/objects/batch"):
            objects = [{"oid": item["oid"], "size": item["size"]} for item in json.loads(body)["objects"]]
            return httpx.Response(200, json={"transfer": "basic", "objects": objects})
        if match := re.fullmatch(r"/api/models/([^/]+/[^/]+)/commit/([^/]+)", path):
            lines = [json.loads(line) for line in body.decode().splitlines() if line]
            self.commits.append({"repo_id": match[1], "revision": match[2], "lines": lines})
            return httpx.Response(200, json={"commitUrl": f"https://huggingface.co/{match[1]}/commit/{'0' * 40}",
                                             "commitOid": "0" * 40})  # fmt: skip
        return httpx.Response(404, json={"error": f"the fake Hub has no {request.method} {path}"})

    @property
    def calls(self) -> list[str]:
        """`METHOD path` of every request, without the revision after `/preupload`, `/commit` and `/branch`, and
        without huggingface_hub's own look-up of its user-agent registry (`GET /api/agent-harnesses`, made at most
        once a day per machine, whatever the command)."""
        return [
            method + " " + re.sub(r"/(preupload|commit|branch)/.*", r"/\1", path)
            for method, path, _ in self.requests
            if path != "/api/agent-harnesses"
        ]

    def committed_files(self, commit: dict) -> dict[str, bytes | tuple[str, int]]:
        """{path: content} of regular files, {path: (sha256, size)} of LFS ones."""
        files = {}
        for line in commit["lines"]:
            value = line["value"]
            if line["key"] == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif line["key"] == "lfsFile":
                files[value["path"]] = (value["oid"], value["size"])
        return files


@pytest.fixture
def fake_hub(monkeypatch):
    import importlib

    from huggingface_hub import constants
    from huggingface_hub.utils import get_session, set_client_factory
    from huggingface_hub.utils._http import default_client_factory

    # the HTTP library huggingface_hub's session is built on (httpx; httpx2 in huggingface_hub 2.x)
    httpx = importlib.import_module(type(get_session()).__module__.split(".")[0])
    hub = FakeHub(httpx)
    monkeypatch.setenv("HF_TOKEN", "hf_fake_write_token")
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # the Xet client is native code the mock cannot serve
    set_client_factory(lambda: httpx.Client(transport=httpx.MockTransport(hub.handle)))
    yield hub
    set_client_factory(default_client_factory)


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_commit_is(hub: FakeHub, commit: dict, files: dict[str, Path]) -> dict:
    committed = hub.committed_files(commit)
    assert sorted(committed) == sorted(files)
    for name, path in files.items():
        if name.endswith(FakeHub.LFS_SUFFIXES):
            assert committed[name] == (_sha256(path), path.stat().st_size), name
        else:
            assert committed[name] == path.read_bytes(), name
    return committed


def test_push_commits_the_model_folder_once(run_dir, fake_hub):
    pareto = _pareto(run_dir)
    best = max(pareto["front"], key=lambda member: member["metrics"]["accuracy"])
    cli(["push", str(run_dir), "--repo-id", "evonets-test/digits-best"])  # default: the most accurate member

    assert fake_hub.calls == [
        "POST /api/repos/create",
        "POST /api/validate-yaml",
        "POST /api/models/evonets-test/digits-best/preupload",
        "POST /evonets-test/digits-best.git/info/lfs/objects/batch",
        "POST /api/models/evonets-test/digits-best/commit",
    ]
    assert all(
        auth == "Bearer hf_fake_write_token"
        for _, path, auth in fake_hub.requests
        if "/repos/" in path or "/models/" in path
    )
    assert fake_hub.created == {
        "name": "digits-best",
        "organization": "evonets-test",
        "type": "model",
    }  # default visibility
    (commit,) = fake_hub.commits
    assert commit["repo_id"] == "evonets-test/digits-best" and commit["revision"] == "main"
    folder = run_dir / "models" / best["hash"]
    code = sorted(path.name for path in folder.glob("*.py"))
    expected = ["README.md", "config.json", "model.safetensors", "pareto.png", "preprocessor_config.json",
                "search_result.json", *code]  # fmt: skip
    assert "modeling_evonet.py" in code and "configuration_evonet.py" in code
    committed = _assert_commit_is(fake_hub, commit, {name: folder / name for name in expected})
    card = committed["README.md"].decode()
    assert 'from_pretrained("evonets-test/digits-best"' in card and str(folder) not in card  # snippets name the repo
    assert best["encoding"] in commit["lines"][0]["value"]["summary"]


def test_push_supernet(run_dir, fake_hub):
    pareto = _pareto(run_dir)
    cli(["push", str(run_dir), "--repo-id", "evonets-test/digits-supernet", "--supernet"])
    (commit,) = fake_hub.commits
    supernet = Path(pareto["supernet"])
    code = sorted(path.name for path in supernet.glob("*.py"))
    assert {"supernet.py", "search_space.py", "modeling_evonet.py"} <= set(code)
    expected = {name: supernet / name for name in ("config.json", "model.safetensors", "preprocessor_config.json",
                                                   "distill_summary.json", *code)}  # fmt: skip
    expected |= {name: run_dir / "supernet_card" / name for name in ("README.md", "pareto.png")}
    committed = _assert_commit_is(fake_hub, commit, expected)
    assert json.loads(committed["config.json"])["model_type"] == "evonet_supernet"  # its config is the search space
    assert 'from_pretrained("evonets-test/digits-supernet"' in committed["README.md"].decode()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"HF_HUB_OFFLINE": "1", "HF_TOKEN": "hf_fake_write_token"},
            r"huggingface_hub is in offline mode \(HF_HUB_OFFLINE=1\); unset",
        ),
        ({}, "no Hugging Face token found. Set HF_TOKEN .* `hf auth login`"),
    ],
    ids=["offline", "no-token"],
)
def test_push_without_token_or_offline_says_what_to_do(built_run, tmp_path, env, message):
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "HUGGING_FACE"))}
    environment |= {"HF_HOME": str(tmp_path / "empty_hf_home"), **env}
    completed = subprocess.run(
        [sys.executable, "-m", "hub_cards", "push", str(built_run), "--repo-id", "evonets-test/x"],
        cwd=REPO, env=environment, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert completed.returncode != 0
    assert re.search(f"^error: cannot push: {message}", completed.stderr, flags=re.MULTILINE), completed.stderr[-2000:]


# ONNX ----------------------------------------------------------------------------------------------------------


def test_onnx_export_matches_pytorch_goes_on_the_card_and_is_pushed(run_dir, fake_hub):
    from evonets.deploy.onnx_export import OnnxRuntimeModel

    member = min(_pareto(run_dir)["front"], key=lambda member: member["metrics"]["macs"])  # the quickest to export
    folder = run_dir / "models" / member["hash"]
    cli(["export", str(run_dir), "--model", member["hash"], "--repeats", "5"])
    report = json.loads((folder / "onnx_export.json").read_text())
    assert report["output_names"] == ["logits"] and report["max_abs_diff"] <= report["atol"] == 1e-4
    assert report["checked_batch_sizes"] == [2, 3] and report["latency"]["repeats"] == 5
    fingerprint = report["latency"]["fingerprint"]
    assert fingerprint["backend"] == "onnxruntime" and fingerprint["onnxruntime"]
    search_fingerprint = _pareto(run_dir)["latency_fingerprint"]
    assert fingerprint["num_threads"] == search_fingerprint["num_threads"]  # timed as the search timed
    assert fingerprint["batch_size"] == search_fingerprint["batch_size"]

    # independently of the export's own check: real digits through onnxruntime and PyTorch
    model = evonets.EvoNetForImageClassification.from_pretrained(folder).eval()
    processor = evonets.EvoNetImageProcessor.from_pretrained(folder)
    pixel_values = processor(_digit_images(16), return_tensors="pt")["pixel_values"]
    logits = OnnxRuntimeModel(folder / "model.onnx")(pixel_values)["logits"]
    with torch.no_grad():
        expected = model(pixel_values).logits.numpy()
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4)
    assert (logits.argmax(-1) == expected.argmax(-1)).all()

    text = (folder / "README.md").read_text()
    ort_ms = f"{report['latency']['median_ms']:.3f} ms"
    assert f"| ONNX Runtime latency | {ort_ms} (IQR" in text
    assert (
        f"| ONNX Runtime {fingerprint['onnxruntime']} | {ort_ms} |" in text
        and report["latency_fingerprint_key"] in text
    )
    assert f"largest absolute difference {report['max_abs_diff']:.2g}" in text

    # published privately to a branch, with the export
    cli(["push", str(run_dir), "--repo-id", "evonets-test/digits-small", "--model", member["hash"], "--private",
         "--revision", "dev", "--supernet-repo-id", "evonets-test/digits-supernet"])  # fmt: skip
    assert fake_hub.calls == [
        "POST /api/repos/create",
        "POST /api/models/evonets-test/digits-small/branch",
        "POST /api/validate-yaml",
        "POST /api/models/evonets-test/digits-small/preupload",
        "POST /evonets-test/digits-small.git/info/lfs/objects/batch",
        "POST /api/models/evonets-test/digits-small/commit",
    ]
    assert fake_hub.created["visibility"] == "private"
    assert any(path == "/api/models/evonets-test/digits-small/branch/dev" for _, path, _ in fake_hub.requests)
    (commit,) = fake_hub.commits
    assert commit["revision"] == "dev"
    files = model_files(folder)
    assert {"model.onnx", "onnx_export.json", "README.md", "pareto.png"} <= set(files)
    _assert_commit_is(fake_hub, commit, files)
    card = ModelCard.load(folder / "README.md")
    assert card.data.base_model == "evonets-test/digits-supernet" and ort_ms in card.text  # rebuilt, still with ORT


@pytest.mark.slow
def test_export_a_task_model_with_a_searched_backbone(quickstart_run, tmp_path):
    """A UperNet (transformers) whose EvoNet backbone is a searched front member: exported, checked, timed."""
    from transformers import UperNetConfig, UperNetForSemanticSegmentation

    from evonets.deploy.onnx_export import OnnxRuntimeModel
    from evonets.models.task_backbone import backbone_config, load_backbone_weights

    member = min(_pareto(quickstart_run / "search")["front"], key=lambda member: member["metrics"]["macs"])
    source = quickstart_run / "search" / "models" / member["hash"]
    backbone = backbone_config(source, out_features=["stage1", "stage2", "stage3"])
    backbone.image_size = 32  # the last stage's 4x4 map divides into every pyramid-pooling scale: ONNX needs it
    torch.manual_seed(0)
    model = UperNetForSemanticSegmentation(
        UperNetConfig(backbone_config=backbone, num_labels=4, hidden_size=16, pool_scales=[1, 2, 4],
                      use_auxiliary_head=False)
    ).eval()  # fmt: skip
    assert load_backbone_weights(model.backbone, source)  # the searched weights, plus the new per-stage norms
    model.save_pretrained(tmp_path / "upernet")
    cli(["export", str(tmp_path / "upernet"), "--repeats", "5"])
    report = json.loads((tmp_path / "upernet" / "onnx_export.json").read_text())
    assert report["model_class"] == "UperNetForSemanticSegmentation" and report["output_names"] == ["logits"]
    assert report["input_shape"][1:] == [3, 32, 32] and report["max_abs_diff"] <= 1e-4
    assert report["latency"]["median_ms"] > 0 and report["latency"]["fingerprint"]["backend"] == "onnxruntime"
    pixel_values = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    actual = OnnxRuntimeModel(tmp_path / "upernet" / "model.onnx")(pixel_values)["logits"]
    with torch.no_grad():
        expected = model(pixel_values).logits.numpy()
    assert actual.shape == (3, 4, 32, 32)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("head", ["segmentation", "depth"])
def test_export_our_heads_with_a_searched_backbone(quickstart_run, tmp_path, head):
    """Our own heads on a searched front member go through the same export: checked in onnxruntime, timed."""
    member = min(_pareto(quickstart_run / "search")["front"], key=lambda member: member["metrics"]["macs"])
    source = quickstart_run / "search" / "models" / member["hash"]
    torch.manual_seed(0)
    if head == "segmentation":
        model = evonets.EvoNetForSemanticSegmentation.from_backbone(
            source, id2label={0: "background", 1: "cell"}, decoder_hidden_size=16
        )
    else:
        model = evonets.EvoNetForDepthEstimation.from_backbone(source, decoder_hidden_size=16, head_hidden_size=8)
    model.eval().save_pretrained(tmp_path / head)
    cli(["export", str(tmp_path / head), "--image-size", "32", "--repeats", "5"])
    report = json.loads((tmp_path / head / "onnx_export.json").read_text())
    assert report["model_class"] == type(model).__name__ and report["input_shape"][1:] == [3, 32, 32]
    assert report["max_abs_diff"] <= 1e-4 and report["latency"]["median_ms"] > 0


def test_export_novel_view_synthesis_with_its_camera_inputs(tmp_path):
    """A model whose inputs are cameras and rays, not pixel_values: exported with its `example_inputs` as named ONNX
    inputs, checked at two batch sizes, timed in onnxruntime on the same inputs."""
    from evonets.deploy.onnx_export import OnnxRuntimeModel

    backbone = evonets.EvoNetConfig(
        patch_size=4, depths=[1, 1], hidden_sizes=[16, 32], block_types=["conv", "attention"], mlp_ratios=2.0,
        out_features=["stage1", "stage2"],
    )  # fmt: skip
    torch.manual_seed(0)
    config = evonets.EvoNetViewSynthesisConfig(
        backbone_config=backbone, hidden_size=32, num_view_layers=1, num_samples=8
    )
    model = evonets.EvoNetForNovelViewSynthesis(config).eval()
    model.save_pretrained(tmp_path / "nvs")
    cli(["export", str(tmp_path / "nvs"), "--image-size", "32", "--repeats", "3", "--atol", "1e-4", "--rtol", "1e-4"])
    report = json.loads((tmp_path / "nvs" / "onnx_export.json").read_text())
    assert report["model_class"] == "EvoNetForNovelViewSynthesis" and report["output_names"] == ["rgb", "depth"]
    assert report["input_names"] == [
        "source_images", "source_poses", "source_intrinsics", "ray_origins", "ray_directions", "near", "far"
    ]  # fmt: skip
    assert report["input_shapes"]["source_images"] == [2, 2, 3, 32, 32] and report["checked_batch_sizes"] == [2, 3]
    assert report["max_abs_diff"] <= 1e-3 and report["latency"]["median_ms"] > 0
    # independently of the export's own check: another batch size, other images and shifted target rays
    inputs = model.example_inputs(32, batch_size=3, num_rays=64, seed=1)
    inputs["ray_origins"] = inputs["ray_origins"] + torch.tensor([0.02, -0.01, 0.0])
    actual = OnnxRuntimeModel(tmp_path / "nvs" / "model.onnx")(inputs)
    with torch.no_grad():
        expected = model(**inputs)
    assert actual["rgb"].shape == (3, 64, 3) and actual["depth"].shape == (3, 64)
    np.testing.assert_allclose(actual["rgb"], expected.rgb.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(actual["depth"], expected.depth.numpy(), rtol=1e-4, atol=1e-4)
    assert float(expected.depth.min()) >= 1.0 and float(expected.depth.max()) <= 10.0  # within near / far


# Loading the published files -----------------------------------------------------------------------------------


LOAD_WITH_REMOTE_CODE = textwrap.dedent(
    """
    import sys

    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForImageClassification

    model_dir, supernet_dir, expected = sys.argv[1], sys.argv[2], load_file(sys.argv[3])
    model = AutoModelForImageClassification.from_pretrained(model_dir, trust_remote_code=True).eval()
    supernet = AutoModelForImageClassification.from_pretrained(supernet_dir, trust_remote_code=True).eval()
    assert type(model).__name__ == "EvoNetForImageClassification", type(model)
    assert type(supernet).__name__ == "EvoNetSupernet", type(supernet)
    extracted = supernet.extract(model.config.arch_encoding)
    assert not any(name.startswith("evonets") for name in sys.modules)
    with torch.no_grad():
        for name, network in (("model", model), ("extracted", extracted)):
            difference = (network(expected["pixel_values"]).logits - expected["logits"]).abs().max().item()
            print(name, "max abs diff", difference)
            assert difference <= 1e-5, (name, difference)
    """
)


def _published(files: dict[str, Path], folder: Path) -> Path:
    """A folder holding exactly the files `push` would commit: what a Hub download of the repository gives."""
    folder.mkdir()
    for name, path in files.items():
        shutil.copyfile(path, folder / name)
    return folder


def test_published_folders_load_with_and_without_evonets(built_run, tmp_path, without_evonets):
    pareto = _pareto(built_run)
    member = max(pareto["front"], key=lambda member: member["metrics"]["accuracy"])
    model_dir = _published(model_files(built_run / "models" / member["hash"]), tmp_path / "model")
    supernet_dir = _published(supernet_files(pareto["supernet"], built_run / "supernet_card"), tmp_path / "supernet")

    # with evonets: the package's classes, and the supernet reproduces the published subnet
    model = evonets.EvoNetForImageClassification.from_pretrained(model_dir).eval()
    supernet = evonets.EvoNetSupernet.from_pretrained(supernet_dir).eval()
    processor = evonets.EvoNetImageProcessor.from_pretrained(model_dir)
    pixel_values = processor(_digit_images(8), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logits = model(pixel_values).logits
        torch.testing.assert_close(supernet.extract(member["encoding"])(pixel_values).logits, logits)
        pooled = evonets.EvoNetModel.from_pretrained(model_dir).eval()(pixel_values).pooler_output
        torch.testing.assert_close(pooled, model.evonet(pixel_values).pooler_output)
    # without evonets: remote code from the published files only
    save_file({"pixel_values": pixel_values, "logits": logits}, tmp_path / "expected.safetensors")
    completed = without_evonets(LOAD_WITH_REMOTE_CODE, model_dir, supernet_dir, tmp_path / "expected.safetensors")
    assert "model max abs diff" in completed.stdout and "extracted max abs diff" in completed.stdout

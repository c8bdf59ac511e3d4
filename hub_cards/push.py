"""Publishing a searched model, or the supernet it came from, to the Hugging Face Hub.

`push(run_dir, repo_id, model=HASH)` first rebuilds the member's card for `repo_id` (so its snippets load that
repository), then makes one commit of exactly the files `model_files` lists: `config.json` (with `auto_map`),
`model.safetensors`, `preprocessor_config.json`, the model code (`*.py`, for `trust_remote_code=True`),
`search_result.json`, the card `README.md`, its `pareto.png`, and `model.onnx` + `onnx_export.json` when
`hub_cards.export` made them. `push(..., supernet=True)` publishes the run's supernet instead: its folder (config =
the search space, weights, processor, code, `distill_summary.json`) with the card from `<run>/supernet_card/`.

The calls are `HfApi.create_repo` (private with `private`, else the account's default visibility; an existing
repository is kept as it is), `HfApi.create_branch` when a `revision` is given (the branch may not exist yet), and
`HfApi.create_commit` with one `CommitOperationAdd` per file. The token comes from where huggingface_hub looks
(`HF_TOKEN`, then the file `hf auth login` writes in `HF_HOME`); without one, or in offline mode
(`HF_HUB_OFFLINE=1`), `PushError` says what to do before anything is built or sent.
"""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)

MODEL_FILES = (
    "config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "search_result.json",
    "README.md",
    "pareto.png",
    "model.onnx",
    "onnx_export.json",
)
SUPERNET_FILES = ("config.json", "model.safetensors", "preprocessor_config.json", "distill_summary.json")
CARD_FILES = ("README.md", "pareto.png")
REQUIRED = ("config.json", "model.safetensors", "README.md")


class PushError(RuntimeError):
    """Publishing cannot start: no token, or offline mode."""


def resolve_token(token: str | None = None) -> str:
    """`token`, else the one huggingface_hub finds (`HF_TOKEN`, then `$HF_HOME/token`); `PushError` when offline or
    when there is none."""
    from huggingface_hub import get_token, is_offline_mode

    if is_offline_mode():
        raise PushError(
            "cannot push: huggingface_hub is in offline mode (HF_HUB_OFFLINE=1); unset HF_HUB_OFFLINE to reach the Hub."
        )
    token = token or get_token()
    if not token:
        raise PushError(
            "cannot push: no Hugging Face token found. Set HF_TOKEN to a token with write access "
            "(https://huggingface.co/settings/tokens), or run `hf auth login` once (it saves the token in $HF_HOME)."
        )
    return token


def _code_files(folder: Path) -> dict[str, Path]:
    return {path.name: path for path in sorted(folder.glob("*.py"))}


def _checked(files: dict[str, Path], where: Path) -> dict[str, Path]:
    missing = [name for name in REQUIRED if name not in files]
    if missing:
        raise ValueError(f"{where} lacks {missing}, which a published model needs.")
    return dict(sorted(files.items()))


def model_files(model_dir: str | Path) -> dict[str, Path]:
    """The files of a front member's folder that are published: {path in the repository: local path}."""
    model_dir = Path(model_dir)
    files = {name: model_dir / name for name in MODEL_FILES if (model_dir / name).is_file()}
    return _checked({**files, **_code_files(model_dir)}, model_dir)


def supernet_files(supernet_dir: str | Path, card_dir: str | Path) -> dict[str, Path]:
    """The files of a supernet folder and of its card folder that are published."""
    supernet_dir, card_dir = Path(supernet_dir), Path(card_dir)
    files = {name: supernet_dir / name for name in SUPERNET_FILES if (supernet_dir / name).is_file()}
    files.update({name: card_dir / name for name in CARD_FILES if (card_dir / name).is_file()})
    return _checked({**files, **_code_files(supernet_dir)}, supernet_dir)


def commit_files(
    repo_id: str,
    files: dict[str, Path],
    *,
    token: str,
    commit_message: str,
    private: bool = False,
    revision: str | None = None,
):
    """Create the repository (kept if it exists), the branch `revision` if given, and commit `files` in one commit.
    Returns huggingface_hub's `CommitInfo`."""
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(token=token)
    # private=None (not False) without --private: a new repository gets the account's default visibility.
    repo_url = api.create_repo(repo_id, repo_type="model", private=True if private else None, exist_ok=True)
    logger.info("repository %s", repo_url)
    if revision is not None:
        api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)) for name, path in files.items()]
    return api.create_commit(repo_id, operations, commit_message=commit_message, repo_type="model", revision=revision)


def push(
    run_dir: str | Path,
    repo_id: str,
    *,
    model: str | None = None,
    supernet: bool = False,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    supernet_dir: str | Path | None = None,
    supernet_repo_id: str | None = None,
    rank_check: str | Path | None = None,
    license: str | None = None,
):
    """Publish front member `model` of the run (default: its most accurate) or, with `supernet`, the run's supernet,
    to the Hub repository `repo_id` (see the module docstring). Returns the `CommitInfo`.

    `supernet_dir`, `supernet_repo_id`, `rank_check` and `license` are the card's (`hub_cards.cards.build_cards`).
    """
    from huggingface_hub.utils import validate_repo_id

    from search.run_folder import find_rank_check, load_run

    from .cards import DEFAULT_LICENSE, write_model_card, write_supernet_card

    token = resolve_token(token)
    try:
        validate_repo_id(repo_id)
    except ValueError as error:
        raise ValueError(f"--repo-id {repo_id!r} is invalid: expected 'ORG/NAME' ({error})") from None
    if supernet and model is not None:
        raise ValueError("--supernet publishes the supernet, --model a front member: give one of them.")
    run = load_run(run_dir, supernet_dir)
    card = {"rank_check": find_rank_check(run, rank_check), "license": license or DEFAULT_LICENSE}
    if supernet:
        readme = write_supernet_card(run, repo_id=repo_id, **card)
        files = supernet_files(run.supernet_dir, readme.parent)
        message = commit_message or f"EvoNet supernet (search space {run.info.get('space')}) with its card"
    else:
        member = run.member(model) if model is not None else run.best_member()
        write_model_card(run, member, repo_id=repo_id, supernet_repo_id=supernet_repo_id, **card)
        files = model_files(run.model_dir(member))
        message = commit_message or f"EvoNet {member['hash']} ({member['encoding']}) from search run {run.name}"
    info = commit_files(repo_id, files, token=token, commit_message=message, private=private, revision=revision)
    logger.info("committed %d files to %s: %s", len(files), repo_id, info.commit_url)
    return info


__all__ = [
    "MODEL_FILES",
    "SUPERNET_FILES",
    "PushError",
    "commit_files",
    "model_files",
    "push",
    "resolve_token",
    "supernet_files",
]

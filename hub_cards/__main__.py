"""`python -m hub_cards build | export | push`: model cards, ONNX export and Hub publishing of a search run.

    python -m hub_cards build runs/quickstart/search                       # a card per front member + the supernet's
    python -m hub_cards build runs/quickstart/search --rank-check runs/rank_check
    python -m hub_cards export runs/quickstart/search --model a1fad2128a88  # model.onnx, checked, ORT latency on the card
    python -m hub_cards export path/to/saved_model --image-size 64          # pixel_values, or its example_inputs
    python -m hub_cards push runs/quickstart/search --repo-id ORG/NAME --model a1fad2128a88 [--private] [--revision dev]
    python -m hub_cards push runs/quickstart/search --repo-id ORG/NAME-supernet --supernet

A plain argparse command line (flags as `hf upload` spells them): three commands with a handful of options each and
no config file to merge, so jsonargparse's YAML machinery would add nothing. Errors in the input (a hash not on the
front, a folder that is not a run, no token, offline mode) end the command with one line saying what to do.
"""

from __future__ import annotations

import argparse
import logging
import sys


def _card_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--supernet-dir", help="the supernet folder, when the one recorded in run.json has moved")
    parser.add_argument(
        "--rank-check",
        help="a rank_check.json (or its folder) to show; default: one of the run's supernet found in RUN_DIR or the "
        "supernet folder, else the card says the ranking was not measured",
    )
    parser.add_argument("--supernet-repo-id", help="where the supernet is published (the cards' base_model)")
    parser.add_argument("--license", default=None, help="licence id of the published weights (default apache-2.0)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hub_cards", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser("build", help="write README.md + pareto.png per front member and the supernet card")
    build.add_argument("run_dir", metavar="RUN_DIR", help="a search run folder (search/run.py's output_dir)")
    build.add_argument("--model", metavar="HASH", help="one front member (default: all)")
    build.add_argument("--repo-id", help="the repository the card's snippets load (default: the local folder)")
    build.add_argument("--no-supernet-card", action="store_true", help="skip <run>/supernet_card/")
    _card_options(build)

    export = commands.add_parser("export", help="ONNX export, checked in onnxruntime, with its latency")
    export.add_argument("path", metavar="PATH", help="a search run folder, or a saved model folder")
    export.add_argument("--model", metavar="HASH", help="one front member of a run (default: all)")
    export.add_argument("--image-size", type=int, help="input side of a saved model (default: its config's)")
    export.add_argument("--atol", type=float, default=1e-4, help="largest |onnxruntime - PyTorch| allowed")
    export.add_argument(
        "--rtol", type=float, default=0.0, help="saved model folders: also allow rtol * |PyTorch| (e.g. for depths)"
    )
    export.add_argument("--repeats", type=int, help="timed calls (default: the run's, else 30)")
    export.add_argument("--num-threads", type=int, help="intra-op threads while timing (default: the run's)")
    _card_options(export)

    push = commands.add_parser("push", help="publish a front member (or the supernet) to the Hub")
    push.add_argument("run_dir", metavar="RUN_DIR", help="a search run folder")
    push.add_argument("--repo-id", required=True, metavar="ORG/NAME", help="the Hub repository (created if missing)")
    target = push.add_mutually_exclusive_group()
    target.add_argument("--model", metavar="HASH", help="the front member (default: the most accurate)")
    target.add_argument("--supernet", action="store_true", help="publish the run's supernet instead")
    push.add_argument("--private", action="store_true", help="create the repository private")
    push.add_argument("--revision", help="branch to commit to (created if missing; default main)")
    push.add_argument("--commit-message", help="default: the model's hash, encoding and run")
    push.add_argument("--token", help="default: HF_TOKEN, else the token `hf auth login` saved")
    _card_options(push)
    return parser


def _card_kwargs(args) -> dict:
    kwargs = {
        "supernet_dir": args.supernet_dir,
        "rank_check": args.rank_check,
        "supernet_repo_id": args.supernet_repo_id,
    }
    if args.license:
        kwargs["license"] = args.license
    return kwargs


def _build(args) -> None:
    from .cards import build_cards

    written = build_cards(
        args.run_dir,
        model=args.model,
        repo_id=args.repo_id,
        with_supernet_card=not args.no_supernet_card,
        **_card_kwargs(args),
    )
    for path in written:
        print(f"wrote {path} (+ {path.parent / 'pareto.png'})")


def _export(args) -> None:
    from pathlib import Path

    from search.run_folder import is_run_folder, load_run

    from .export import export_folder, run_latency_settings
    from .run_export import export_run

    path = Path(args.path)
    if is_run_folder(path):
        run = load_run(path, args.supernet_dir)
        if args.image_size is not None:
            raise ValueError(
                "--image-size is for saved model folders; a run's models are exported at their resolution."
            )
        settings = run_latency_settings(run)
        _override(settings, args)
        results = export_run(path, model=args.model, atol=args.atol, latency=settings, **_card_kwargs(args))
    else:
        from evonets.deploy.latency import LatencySettings

        if args.model is not None:
            raise ValueError(f"--model is for run folders; {path} is not one (no pareto.json).")
        settings = LatencySettings(backend="onnxruntime")
        _override(settings, args)
        results = [
            {
                "hash": path.name,
                **export_folder(path, image_size=args.image_size, latency=settings, atol=args.atol, rtol=args.rtol),
            }
        ]
    for result in results:
        latency = result["latency"]
        line = (
            f"{result['hash']}: {result['file']} ({result['exporter']}, opset {result['opset']}), max |ORT - PyTorch| "
            f"{result['max_abs_diff']:.2g} at batch {result['checked_batch_sizes']}; ONNX Runtime latency "
            f"{latency['median_ms']:.3f} ms (IQR {latency['iqr_ms']:.3f})"
        )
        if "torch_latency_ms" in result:
            line += f" vs PyTorch {result['torch_latency_ms']:.3f} ms in the search; card updated"
        print(line)


def _override(settings, args) -> None:
    if args.repeats is not None:
        settings.repeats = args.repeats
    if args.num_threads is not None:
        settings.num_threads = args.num_threads
    settings.validate()


def _push(args) -> None:
    from .push import push

    info = push(
        args.run_dir,
        args.repo_id,
        model=args.model,
        supernet=args.supernet,
        private=args.private,
        revision=args.revision,
        token=args.token,
        commit_message=args.commit_message,
        **_card_kwargs(args),
    )
    print(f"pushed to {args.repo_id}{f'@{args.revision}' if args.revision else ''}: {info.commit_url}")


def main(argv: list[str] | None = None) -> None:
    from huggingface_hub.errors import HfHubHTTPError

    from .push import PushError

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        {"build": _build, "export": _export, "push": _push}[args.command](args)
    except (ValueError, PushError, HfHubHTTPError) as error:
        raise SystemExit(f"error: {error}") from error


if __name__ == "__main__":
    main(sys.argv[1:])

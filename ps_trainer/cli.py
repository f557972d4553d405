"""`ps-train`: train with the embedded default, or with flags / a YAML config; `ps-train models`
lists the zoo.

    ps-train                                   # digits, 4 async workers, 2 shards, ~1 minute on CPU
    ps-train --model resnet18 --workers 8 --address auto
    ps-train --config run.yaml --lr 0.1        # flags override the file
    ps-train --simulate --workers 16           # the deterministic simulator, same flags
    ps-train sweep examples/staleness_sweep.yaml && ps-train report runs/staleness_sweep
    ps-train --resume runs/RUN                 # continue from the latest checkpoint
    ps-train export runs/RUN --weights polyak --out model.pt

Flags are generated from `TrainConfig`, so `--help` always shows every setting and its default.
Bad flags fail before Ray starts, naming the flag and what is allowed.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from .config import TrainConfig

SUBCOMMANDS = ("train", "models", "sweep", "report", "export")


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ps-train", description="Asynchronous SGD on a sharded parameter server built from "
        "Ray actors (DistBelief / Downpour SGD). Sub-commands: `ps-train models` lists the zoo; "
        "`ps-train sweep SPEC.yaml` runs a grid of runs; `ps-train report DIR` plots a run or sweep.",
    )
    p.add_argument("--config", default=None, help="YAML file of settings; flags override it (default: none)")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        helptext = f.metadata.get("help", "")
        if isinstance(f.default, bool):
            p.add_argument(flag, default=argparse.SUPPRESS, action=argparse.BooleanOptionalAction,
                           help=f"{helptext} (default: {f.default})")
        else:
            p.add_argument(flag, default=argparse.SUPPRESS, type=str, metavar=type(f.default).__name__.upper(),
                           help=f"{helptext} (default: {f.default!r})")
    return p


def config_from_args(argv: list[str]) -> TrainConfig:
    args = vars(train_parser().parse_args(argv))
    path = args.pop("config")
    if args.get("resume") and not path:  # the run's own settings, flags over them
        from pathlib import Path

        path = Path(args["resume"]) / "config.yaml"
        if not path.is_file():
            raise ValueError(f"--resume {args['resume']}: not a run directory (no config.yaml)")
        args["run_dir"] = args["resume"]
    if path:
        return TrainConfig.from_yaml(path, overrides=args)
    return TrainConfig.from_dict(args, source="flags")


def cmd_models(argv: list[str]) -> int:
    argparse.ArgumentParser(prog="ps-train models", description="List the model zoo.").parse_args(argv)
    import signal

    from . import models

    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `ps-train models | head` ends quietly

    table = models.model_table() if hasattr(models, "model_table") else [
        {"name": n, "params": sum(p.numel() for p in models.build(n).parameters()),
         "input_size": models.get_spec(n).input_size, "gmacs": float("nan"),
         "aux_heads": models.get_spec(n).aux_heads} for n in models.list_models()]
    print(f"{'name':24} {'params':>14} {'input':>7} {'GMACs':>8} {'aux':>4}")
    for r in table:
        print(f"{r['name']:24} {r['params']:>14,} {r['input_size']:>7} {r['gmacs']:>8.2f} {r['aux_heads']:>4}")
    return 0


def cmd_harness(name: str, argv: list[str]) -> int:
    """`ps-train sweep SPEC`, `ps-train report DIR` (the staleness harness), `ps-train export`."""
    from importlib import import_module

    try:
        package = ".trainer" if name == "export" else ".harness"
        return import_module(f"{package}.{name}", __package__).main(argv)
    except ValueError as e:
        print(f"ps-train {name}: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"ps-train {name}: error: {e}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "models":
        return cmd_models(argv[1:])
    if argv and argv[0] in ("sweep", "report", "export"):
        return cmd_harness(argv[0], argv[1:])
    if argv and argv[0] == "train":
        argv = argv[1:]
    try:
        cfg = config_from_args(argv).validate()
        if cfg.resume:
            from .trainer import checkpoint

            if not checkpoint.exists(cfg.checkpoint_location()):
                raise ValueError(f"--resume {cfg.resume}: no checkpoint in "
                                 f"{cfg.checkpoint_location()}/checkpoints")
        if cfg.simulate:
            from .harness.simulate import simulate as run
        else:
            from .trainer import train as run

        summary = run(cfg, log=lambda s: print(s, flush=True))
    except ValueError as e:  # bad settings: nothing was started
        print(f"ps-train: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # the run failed; what it did is in its run directory
        print(f"ps-train: error: {e}", file=sys.stderr)
        return 1
    return 130 if summary.get("interrupted") else 0


if __name__ == "__main__":
    sys.exit(main())

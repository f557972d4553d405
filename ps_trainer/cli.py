"""`ps-train`: train with the embedded default, or with flags / a YAML config; `ps-train models`
lists the zoo.

    ps-train                                   # digits, 4 async workers, 2 shards, ~1 minute on CPU
    ps-train --model resnet18 --workers 8 --address auto
    ps-train --config run.yaml --lr 0.1        # flags override the file
    ps-train --simulate --workers 16           # the deterministic simulator, same flags
    ps-train sweep examples/03_staleness_sweep.yaml && ps-train report runs/staleness_sweep
    ps-train --resume runs/RUN                 # continue from the latest checkpoint
    ps-train export runs/RUN --weights polyak --out model.pt
    ps-train data prepare ~/imagenet data/imagenet   # image folders or CIFAR into Parquet
    ps-train serve --model digits_cnn --ps-shards 2 --workers 2 --port 50051   # gRPC server
    ps-train worker --ps grpc://127.0.0.1:50051 --steps 500          # a worker outside Ray
    ps-train --serve-grpc 50051               # a Ray run that outside workers can join
    ps-train --dataset parquet --data-dir data/imagenet --model inception_v3

Flags are generated from `TrainConfig`, so `--help` always shows every setting and its default.

Whatever goes wrong ends as one line on stderr and an exit status, never a traceback:
- 2, bad input (a ValueError): `ps-train: error: --FLAG VALUE: what is wrong; what is allowed`,
  before Ray or any actor starts (`--dry-run` runs every such check and stops there);
- 1, a run that failed (a RuntimeError; what it did is in its run directory);
- 1, an internal error (anything else, a bug): its type and message, and the file that holds the
  traceback (`<run dir>/error.log`, or a `ps-train-*.log` in the temp folder);
- 130, Ctrl-C.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import re
import sys
import tempfile
import traceback
from pathlib import Path

from .config import TrainConfig
from .flags import ArgumentParser

SUBCOMMANDS = ("train", "models", "sweep", "report", "export", "data", "serve", "worker")


class _Switch(argparse.Action):
    """A bool setting, `--flag` or `--flag VALUE` (true/false, yes/no, on/off, 1/0, as in a YAML
    file); `--no-flag` is its own action. The value stays a string: `TrainConfig` judges it."""

    def __call__(self, parser, namespace, value, option_string=None):
        setattr(namespace, self.dest, "true" if value is None else value)


def train_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="ps-train", description="Asynchronous SGD on a sharded parameter server built from "
        "Ray actors (DistBelief / Downpour SGD). Sub-commands: `ps-train models` lists the zoo; "
        "`ps-train sweep SPEC.yaml` runs a grid of runs; `ps-train report DIR` plots a run or sweep.",
    )
    p.add_argument("--config", default=None, help="YAML file of settings; flags override it (default: none)")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        helptext = f.metadata.get("help", "")
        if isinstance(f.default, bool):
            p.add_argument(flag, default=argparse.SUPPRESS, action=_Switch, nargs="?",
                           metavar="BOOL", help=f"{helptext} (default: {f.default}; "
                                                f"--no-{flag[2:]} for false)")
            p.add_argument("--no-" + flag[2:], dest=f.name, action="store_const",
                           const="false", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        elif "on" in TrainConfig.CHOICES.get(f.name, ()):  # auto|on|off: `--flag` alone is on
            p.add_argument(flag, default=argparse.SUPPRESS, action=_Switch, nargs="?",
                           metavar="auto|on|off", help=f"{helptext} (default: {f.default}; "
                                                        f"--no-{flag[2:]} for off)")
            p.add_argument("--no-" + flag[2:], dest=f.name, action="store_const",
                           const="off", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        else:
            p.add_argument(flag, default=argparse.SUPPRESS, type=str, metavar=type(f.default).__name__.upper(),
                           help=f"{helptext} (default: {f.default!r})")
    return p


def _attach_values(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """`--lr -inf`, `--epochs -1e300`: argparse takes a token starting with '-' for a flag unless
    it looks like a plain negative number; after a flag that takes a value, it is that value."""
    takes_value = {s for a in parser._actions if a.nargs != 0 for s in a.option_strings}
    out = []
    for token in argv:
        if out and out[-1] in takes_value and re.match(r"-[^-]", token) and token != "-h":
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


def config_from_args(argv: list[str], parser: argparse.ArgumentParser | None = None,
                     extras: tuple = ()) -> TrainConfig:
    """The settings of `argv`: flags over a --config file (or over a resumed run's own).
    `parser`: `train_parser()` with the sub-command's own `extras` (popped into `cfg.extras`)."""
    parser = parser or train_parser()
    args = vars(parser.parse_args(_attach_values(argv, parser)))
    own = {k: args.pop(k) for k in extras}
    cfg = _settings(args)
    cfg.extras = own  # not a setting: not written to config.yaml
    return cfg


def _settings(args: dict) -> TrainConfig:
    path = args.pop("config")
    if args.get("resume") and not path:  # the run's own settings, flags over them
        path = Path(args["resume"]) / "config.yaml"
        if not path.is_file():
            raise ValueError(f"--resume {args['resume']}: not a run directory (no config.yaml)")
        args["run_dir"] = args["resume"]
    if path:
        return TrainConfig.from_yaml(path, overrides=args)
    return TrainConfig.from_dict(args, source="flags")


def cmd_models(argv: list[str]) -> int:
    ArgumentParser(prog="ps-train models", description="List the model zoo.").parse_args(argv)
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

    package = ".trainer" if name == "export" else ".harness"
    return import_module(f"{package}.{name}", __package__).main(argv)


def cmd_data(argv: list[str]) -> int:
    """`ps-train data prepare SRC DST` (data/prepare.py)."""
    if argv[:1] != ["prepare"]:
        raise ValueError(f"{(argv or ['(nothing)'])[0]}: unknown; the data sub-command is "
                         f"`ps-train data prepare SRC DST` (`--help` for its settings)")
    from .data import prepare

    return prepare.main(argv[1:])


def cmd_train(argv: list[str], context: dict) -> int:
    """Check everything that can be checked (the settings and the places the run writes, cheap
    and answered at once, then the data and the model), then run, in the simulator or on Ray. `context['cfg']` is the
    config once known (its run directory takes the traceback of an internal error)."""
    cfg = context["cfg"] = config_from_args(argv).validate()
    if cfg.resume:
        from .core import checkpoint

        if not checkpoint.exists(cfg.checkpoint_location()):
            raise ValueError(f"--resume {cfg.resume}: no checkpoint in "
                             f"{cfg.checkpoint_location()}/checkpoints")
    from .trainer import preflight
    from .trainer.plan import prepare

    preflight.check_locations(cfg)  # before the data and the model, which take seconds to load
    plan = prepare(cfg)  # the data and the model, checked here and handed to the run
    preflight.check_plan(plan)
    where = preflight.check_where(plan)  # the memory here, or that the cluster answers
    if cfg.dry_run:
        print(preflight.describe(plan, where))
        return 0
    log = lambda s: print(s, flush=True)  # noqa: E731
    if cfg.simulate:  # it prepares its own plan: its RNG stream starts at the seed, as always
        from .harness.simulate import simulate

        summary = simulate(cfg, log=log)
    else:
        from .trainer import train

        summary = train(cfg, log=log, plan=plan)
    return 130 if summary.get("interrupted") else 0


def cmd_serve(argv: list[str], context: dict) -> int:
    """`ps-train serve`: the parameter server alone, over gRPC (trainer/serve.py)."""
    p = train_parser()
    p.prog, p.description = "ps-train serve", (
        "Serve a parameter server (the shards of --model, with the run's policy, optimizer, "
        "checkpoints and metrics) over gRPC, for `ps-train worker` processes outside Ray.")
    p.add_argument("--port", default="50051", help="port to listen on (0 = any free one, "
                   "printed at start and written to RUN/server.json) (default: 50051)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind; any but loopback "
                   "needs --tls-cert/--tls-key or --insecure (default: 127.0.0.1)")
    cfg = context["cfg"] = config_from_args(argv, p, ("port", "host")).validate()
    host, port = cfg.extras["host"], cfg.extras["port"]
    from .config import grpc_address

    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    grpc_address(address, "--port")
    if cfg.resume:
        from .core import checkpoint

        if not checkpoint.exists(cfg.checkpoint_location()):
            raise ValueError(f"--resume {cfg.resume}: no checkpoint in "
                             f"{cfg.checkpoint_location()}/checkpoints")
    from .trainer import preflight
    from .trainer.plan import prepare
    from .trainer.serve import serve_run

    preflight.check_locations(cfg)  # before the data and the model, which take seconds to load
    plan = prepare(cfg)
    preflight.check_plan(plan)
    if cfg.dry_run:
        print(f"dry run: every check passed; would serve {cfg.model} in {cfg.ps_shards} shards "
              f"on {address}")
        return 0
    summary = serve_run(cfg, plan, address, log=lambda s: print(s, flush=True))
    return 130 if summary.get("interrupted") else 0


def cmd_worker(argv: list[str]) -> int:
    """`ps-train worker --ps grpc://HOST:PORT`: one worker outside Ray (trainer/outside_worker.py)."""
    p = train_parser()
    p.prog, p.description = "ps-train worker", (
        "Train one worker against a parameter server reached over gRPC (`ps-train serve`, or a "
        "Ray run started with --serve-grpc). The model comes from the server; the data, batch "
        "and worker settings from these flags.")
    p.add_argument("--ps", required=True, help="the server: grpc://HOST:PORT (grpcs:// for TLS "
                   "verified with the system's CAs; --tls-ca FILE for your own CA)")
    p.add_argument("--steps", default="0", help="steps to train (default: 0 = --epochs of this "
                   "worker's partition)")
    p.add_argument("--worker-id", default=None, help="reconnect as this worker id, continuing at "
                   "its recorded pushes (default: a new id from the server)")
    cfg = config_from_args(argv, p, ("ps", "steps", "worker_id")).validate()
    steps = _count(cfg.extras["steps"], "--steps", 0)
    wid = cfg.extras["worker_id"]
    wid = None if wid is None else _count(wid, "--worker-id", 0)
    if cfg.simulate or cfg.serve_grpc or cfg.resume:
        raise ValueError("--simulate, --serve-grpc and --resume are settings of a run, not of a "
                         "worker; give them to `ps-train` or `ps-train serve`")
    from .trainer.outside_worker import run_worker

    out = run_worker(cfg, cfg.extras["ps"], steps, wid, log=lambda s: print(s, flush=True))
    return 130 if out["interrupted"] else 0


def _count(value: str, flag: str, lo: int) -> int:
    if not str(value).isdigit() or int(value) < lo:
        raise ValueError(f"{flag} {value}: expected a whole number >= {lo}")
    return int(value)


def guarded(prog: str, argv: list[str], command, run_dir=lambda: "") -> int:
    """`command()` (the sub-command `prog` on `argv`), with whatever goes wrong turned into one
    line on stderr and an exit status (see the module docstring). `run_dir()` is where an
    internal error's traceback goes, if that folder exists by then."""
    try:
        return command()
    except ValueError as e:  # bad input: nothing was started
        return _fail(f"{prog}: error: {e}", 2)
    except RuntimeError as e:  # the run failed; what it did is in its run directory
        return _fail(f"{prog}: error: {e}", 1)
    except KeyboardInterrupt:  # a run handles Ctrl-C itself: this one came before or after it
        return _fail(f"{prog}: interrupted (Ctrl-C)", 130)
    except Exception as e:  # noqa: BLE001 - a bug: one line here, the traceback in a file
        log = _write_traceback(e, run_dir(), ["ps-train", *argv])
        return _fail(f"{prog}: internal error: {type(e).__name__}: {e} (the traceback is in "
                     f"{log})", 1)


def _fail(message: str, status: int) -> int:
    print(" ".join(message.split()), file=sys.stderr)  # one line, whatever the message held
    return status


def _write_traceback(e: BaseException, run_dir: str, command: list) -> str:
    """Append `e`'s traceback to <run_dir>/error.log if the run directory exists, else to a new
    ps-train-<stamp>-<pid>.log in the temp folder; returns the file's path."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    text = f"{stamp} {' '.join(command)}\n{''.join(traceback.format_exception(e))}\n"
    places = [Path(run_dir) / "error.log"] if run_dir and Path(run_dir).is_dir() else []
    places.append(Path(tempfile.gettempdir()) / f"ps-train-{stamp}-{os.getpid()}.log")
    for path in places:
        try:
            with open(path, "a") as f:
                f.write(text)
            return str(path)
        except OSError:
            continue
    return "no file: none could be written"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "models":
        return guarded("ps-train models", argv, lambda: cmd_models(argv[1:]))
    if argv and argv[0] == "data":
        return guarded(" ".join(["ps-train", *argv[:2]]), argv, lambda: cmd_data(argv[1:]))
    if argv and argv[0] in ("sweep", "report", "export"):
        return guarded(f"ps-train {argv[0]}", argv, lambda: cmd_harness(argv[0], argv[1:]))
    context: dict = {}
    run_dir = lambda: context["cfg"].run_dir if "cfg" in context else ""  # noqa: E731
    if argv and argv[0] == "serve":
        return guarded("ps-train serve", argv, lambda: cmd_serve(argv[1:], context), run_dir)
    if argv and argv[0] == "worker":
        return guarded("ps-train worker", argv, lambda: cmd_worker(argv[1:]))
    settings = argv[1:] if argv[:1] == ["train"] else argv
    return guarded("ps-train", argv, lambda: cmd_train(settings, context),
                   run_dir=lambda: context["cfg"].run_dir if "cfg" in context else "")


if __name__ == "__main__":
    sys.exit(main())

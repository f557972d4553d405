"""Preflight: what `TrainConfig.validate()` cannot check alone, checked before anything starts.

`validate()` judges each setting by itself. What needs the data, the model or the file system is
here: settings whose upper bound is the data (a batch larger than a worker's share of it, a push
interval the run never reaches) and the places the run will write. Every check raises ValueError
naming the flag, the value, what is wrong and what is allowed; none of them starts Ray or an actor,
and none leaves anything behind (a folder made to test it is removed again).
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
from pathlib import Path

from ..config import TrainConfig


def check_plan(plan) -> None:
    """The upper bounds that depend on the data: a `run.Plan` from `prepare(cfg)`."""
    cfg, n = plan.cfg, plan.data.n_train
    share = n // cfg.workers  # the smallest partition (array_split: sizes differ by at most 1)
    # A worker's batches would silently shrink to its whole share (a stream's cross epochs).
    if cfg.batch_size > share and not plan.data.streamed:
        raise ValueError(f"--batch-size {cfg.batch_size} is more than one worker's share of the "
                         f"training set ({n} examples / --workers {cfg.workers} = {share}); use "
                         f"--batch-size {share} or less, or fewer --workers")
    steps = plan.steps_per_worker
    for flag, every in (("fetch-every", cfg.fetch_every), ("push-every", cfg.push_every)):
        if every > steps:  # no worker would ever fetch again / push at all
            raise ValueError(f"--{flag} {every} is more than the {steps} steps each worker takes "
                             f"in this run, so it never comes round; use at most {steps}, or "
                             f"more --epochs")
    versions = steps * cfg.workers // cfg.push_every  # every push makes a version of each shard
    if cfg.publish_every > versions:  # every pull would read the initial weights
        raise ValueError(f"--publish-every {cfg.publish_every} is more than the {versions} "
                         f"versions a shard reaches in this run, so no update would ever be "
                         f"published; use at most {versions}")


def check_locations(cfg: TrainConfig) -> None:
    """The run directory and the checkpoint location can be created and written: a folder is
    made if needed and a small file written and deleted there, then what was made is removed."""
    if cfg.resume:
        _probe(cfg.resume, f"--resume {cfg.resume}", "")
    elif cfg.run_dir:
        _probe(cfg.run_dir, f"--run-dir {cfg.run_dir}", "")
    else:  # the run goes to runs/<stamp>-<model>
        _probe("runs", "--run-dir '' (a new folder under runs/)", ", or set --run-dir")
    if cfg.checkpoint_dir:
        _probe(cfg.checkpoint_dir, f"--checkpoint-dir {cfg.checkpoint_dir}",
               ", or leave --checkpoint-dir empty to checkpoint into the run directory")


def _probe(location: str, shown: str, fix: str) -> None:
    try:
        (_probe_uri if "://" in location else _probe_local)(location)
    except Exception as e:  # noqa: BLE001 - OSError, pyarrow's errors, a bad URI: all one answer
        reason = f"{e.strerror}: {e.filename}" if isinstance(e, OSError) and e.strerror and \
            e.filename else " ".join(str(e).split()) or type(e).__name__
        raise ValueError(f"{shown}: cannot write there ({reason}); choose a folder this user can "
                         f"create and write{fix}") from None


def _probe_local(location: str) -> None:
    folder = Path(location).expanduser()
    if folder.exists() and not folder.is_dir():
        raise OSError(errno.ENOTDIR, "a file, not a folder", str(folder))
    made = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".ps-train-probe-{os.getpid()}"
        probe.write_bytes(b"ps-train")
        probe.unlink()
    finally:
        for p in made:
            with contextlib.suppress(OSError):
                p.rmdir()


def _probe_uri(location: str) -> None:
    """A pyarrow filesystem URI (file://, s3://, gs://...), read as checkpoint.py reads it."""
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(location)
    path = path.rstrip("/")
    made, p = [], path  # the folders create_dir will make, deepest first
    while p not in ("", "/") and fs.get_file_info(p).type == pafs.FileType.NotFound:
        made.append(p)
        p = posixpath.dirname(p)
    try:
        fs.create_dir(path, recursive=True)
        probe = f"{path}/.ps-train-probe-{os.getpid()}"
        with fs.open_output_stream(probe) as f:
            f.write(b"ps-train")
        fs.delete_file(probe)
    finally:
        for p in made:
            with contextlib.suppress(Exception):
                fs.delete_dir(p)


def check_where(plan) -> str:
    """Where the run goes, checked as far as it can be without starting anything: the memory
    estimate and the resource plan on this machine, or that a Ray cluster answers at --address.
    Returns it in words, for `describe`."""
    import torch

    from .cluster import check_address, plan_resources
    from .plan import check_memory, prefetch_setting, worker_options

    cfg = plan.cfg
    if cfg.simulate:
        return "this process (the simulator: logical workers on a virtual clock)"
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        check_address(address, "--address" if cfg.address else "--address (from RAY_ADDRESS)")
        return f"the Ray cluster at {address}: it answers (its memory is not estimated here)"
    try:
        check_memory(plan)
    except ValueError as e:  # its message names --workers only in its fix, but shards count too
        raise ValueError(f"--workers {cfg.workers} --ps-shards {cfg.ps_shards} --batch-size "
                         f"{cfg.batch_size} --image-size {plan.image_size}: more memory than "
                         f"this machine has: {e}") from None
    here = {"CPU": os.cpu_count(), "GPU": torch.cuda.device_count()}
    r = plan_resources(cfg.workers, cfg.ps_shards, cfg.device, here, [here])
    prefetch = prefetch_setting(worker_options(plan)["prefetch"], r.worker_cpus, r.device == "cuda")
    return "\n".join([f"this machine, {r.device}, {r.worker_cpus:g} CPU per worker"
                       + (" and a GPU" if r.worker_gpus else "") + f", prefetch {prefetch}; the "
                       "memory estimate fits",
                       *(f"warning: {w}" for w in r.warnings)])


def describe(plan, where: str) -> str:
    """The plan of a run in a few lines: what `ps-train --dry-run` prints."""
    cfg, data = plan.cfg, plan.data
    sizes = [s.params[1] - s.params[0] for s in plan.layout.shards(cfg.ps_shards)]
    shape = "x".join(map(str, data.image_shape))
    lines = [*(f"note: {n}" for n in plan.notes),
             f"model:       {cfg.model}, {plan.layout.num_params:,} parameters in {cfg.ps_shards} "
             f"shard(s) of {min(sizes):,}-{max(sizes):,}",
             f"data:        {cfg.dataset}, {data.n_train:,} training and {data.n_test:,} "
             f"test images of {shape}, {data.num_classes} classes, trained at "
             f"{plan.image_size}x{plan.image_size}",
             f"steps:       {plan.steps_per_worker:,} per worker x {cfg.workers} worker(s) at "
             f"batch {cfg.batch_size} ({cfg.epochs:g} epochs), policy {cfg.policy}",
             f"runs on:     {where}",
             f"run dir:     {cfg.resume or cfg.run_dir or 'runs/<date>-<time>-' + cfg.model} "
             f"(writable)",
             "checkpoints: " + (f"{cfg.checkpoint_dir} (writable)" if cfg.checkpoint_dir
                                 else "in the run directory"),
             "dry run: every check passed; nothing was started"]
    return "\n".join(lines)

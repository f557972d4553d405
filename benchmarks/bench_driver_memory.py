"""The driver's memory during a real Ray run on a prepared (Parquet) data set, against the data
set's size: it should not grow with it.

Why: on `--dataset parquet` the driver holds the manifest and the list of row-group pieces,
never pixels. Each worker streams its own partition (stream.py), evaluation decodes the held-out
split in an actor of its own (evaluate.EvaluatorActor), so a data set 8x (or 1000x) larger
should cost the driver a few bytes per row group and nothing per image. A driver whose memory
grows with the data set would be the first thing to fail on ImageNet.

How: two generated trees of JPEGs (--size pixels, noise on a class colour, quality 95, a few
KiB each, --classes classes, train/<class>/ and val/<class>/): a small one of --train-images +
--val-images images and a big one --scale times larger. Each is prepared with `ps-train data
prepare --row-group-size 64 --jobs 2`, then trained on by `ps-train` in a subprocess (resnet20
at 32x32, --workers 2, --ps-shards 1, batch 16, local Ray) for the SAME number of steps per
worker (--steps; --epochs is chosen from the training split's size), so the two runs differ only
in the data set. The driver's RSS (the subprocess's own pid, not its children) is sampled every
0.1 s, from start to exit, with psutil: its peak and its median. The summed RSS of the run's Ray
worker processes (those named `ray::...`: the actors and their DataLoader processes; shared
pages counted in each) is sampled every 0.5 s, for reference. Runs go small, big, small, big,
... (--repeats pairs) and each cell is the median over the repeats.

    python benchmarks/bench_driver_memory.py [--train-images 600] [--scale 8] [--steps 40] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "ps_trainer.cli"]
MiB = 2**20


def make_tree(root: Path, train: int, val: int, classes: int, size: tuple[int, int],
              seed: int) -> int:
    """JPEGs of `size` (width, height) under root/{train,val}/<class>/; returns their bytes."""
    rng = np.random.default_rng(seed)
    w, h = size
    total = 0
    for split, n in (("train", train), ("val", val)):
        for i in range(n):
            c = i % classes
            colour = np.array([60 + 70 * c, 200 - 60 * c, 90 + 40 * c]) % 256
            pixels = np.clip(colour + rng.integers(-64, 64, (h, w, 3)), 0, 255).astype(np.uint8)
            path = root / split / f"class{c:02d}" / f"{i:06d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path, "JPEG", quality=95)
            total += path.stat().st_size
    return total


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def prepare(src: Path, dst: Path) -> dict:
    subprocess.run([*CLI, "data", "prepare", str(src), str(dst), "--row-group-size", "64",
                    "--jobs", "2"], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    m = json.loads((dst / "manifest.json").read_text())
    return {"images": {s: d["images"] for s, d in m["splits"].items()}, "bytes": du(dst),
            "pieces": sum(len(f["row_groups"]) for d in m["splits"].values() for f in d["files"])}


def is_ray_worker(p: psutil.Process) -> bool:
    try:
        cmd = p.cmdline()
        return bool(cmd) and cmd[0].startswith("ray::")
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def run_sampled(cmd: list[str], log: Path) -> dict:
    """Run `cmd`, sampling its own RSS every 0.1 s and its Ray worker descendants' every 0.5 s."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        me = psutil.Process(proc.pid)
        driver, workers = [], []
        tick = 0
        t0 = time.perf_counter()
        while proc.poll() is None:
            try:
                driver.append(me.memory_info().rss)
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                break
            if tick % 5 == 0:
                total = 0
                try:
                    for p in me.children(recursive=True):
                        if is_ray_worker(p):
                            try:
                                total += p.memory_info().rss
                            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                                pass
                except (psutil.NoSuchProcess, psutil.ZombieProcess):
                    pass
                workers.append(total)
            tick += 1
            time.sleep(0.1)
        rc = proc.wait()
        wall = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {rc}; see {log}:\n{log.read_text()[-3000:]}")
    return {"peak": max(driver), "median": statistics.median(driver), "samples": len(driver),
            "workers_peak": max(workers) if workers else 0, "wall": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-images", type=int, default=600)
    ap.add_argument("--val-images", type=int, default=60)
    ap.add_argument("--scale", type=int, default=8, help="the big data set is this many times the small")
    ap.add_argument("--classes", type=int, default=3)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--height", type=int, default=48)
    ap.add_argument("--steps", type=int, default=40, help="steps per worker of every run")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=1, help="pairs of runs (small, big)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (printed)")
    ap.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    a = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    load = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="bench-driver-memory-"))
    sets = {"small": 1, "big": a.scale}
    info: dict[str, dict] = {}
    try:
        for name, k in sets.items():
            t = time.perf_counter()
            jpeg = make_tree(work / f"src-{name}", a.train_images * k, a.val_images * k, a.classes,
                             (a.width, a.height), seed=k)
            prep = prepare(work / f"src-{name}", work / f"dst-{name}")
            n_train = prep["images"]["train"]
            # ceil(epochs * n_train / (batch * workers)) == steps, without float luck
            epochs = (a.steps * a.batch_size * a.workers - 0.5) / n_train
            info[name] = {"jpeg": jpeg, **prep, "epochs": epochs, "runs": []}
            print(f"{name}: {n_train} train + {prep['images'].get('val', 0)} val JPEGs, "
                  f"{jpeg / MiB:.1f} MiB of JPEG, {prep['bytes'] / MiB:.1f} MiB prepared, "
                  f"--epochs {epochs:.4f}; made in {time.perf_counter() - t:.0f} s", flush=True)
        for r in range(a.repeats):
            for name in sets:
                d = info[name]
                run_dir = work / f"run-{name}-{r}"
                cmd = [*CLI, "--dataset", "parquet", "--data-dir", str(work / f"dst-{name}"),
                       "--model", "resnet20", "--image-size", "32", "--workers", str(a.workers),
                       "--ps-shards", "1", "--batch-size", str(a.batch_size),
                       "--epochs", repr(d["epochs"]), "--eval-every", "5", "--eval-images",
                       str(a.val_images), "--no-progress", "--run-dir", str(run_dir)]
                res = run_sampled(cmd, work / f"log-{name}-{r}.txt")
                summary = json.loads((run_dir / "summary.json").read_text())
                res["steps"] = summary.get("steps")
                if res["steps"] != a.steps * a.workers:
                    print(f"  warning: {res['steps']} worker steps, not {a.steps * a.workers}")
                d["runs"].append(res)
                print(f"{name} run {r}: driver peak {res['peak'] / MiB:.0f} MiB, median "
                      f"{res['median'] / MiB:.0f} MiB ({res['samples']} samples), Ray workers' "
                      f"peak {res['workers_peak'] / MiB:.0f} MiB, {res['steps']} worker steps, "
                      f"{res['wall']:.0f} s", flush=True)

        def cell(name: str, key: str) -> float:
            return statistics.median(r[key] for r in info[name]["runs"])

        rows = []
        for name in sets:
            d = info[name]
            ratio = "1 (baseline)" if name == "small" else (
                f"peak {cell(name, 'peak') / cell('small', 'peak'):.2f}, median "
                f"{cell(name, 'median') / cell('small', 'median'):.2f}")
            rows.append(f"| {name} | {d['images']['train']:,} | {d['bytes'] / MiB:.1f} "
                        f"({d['jpeg'] / MiB:.1f} as JPEG) | {cell(name, 'peak') / MiB:.0f} | "
                        f"{cell(name, 'median') / MiB:.0f} | {ratio} |")
        disk = info["big"]["bytes"] / info["small"]["bytes"]
        extra_bytes = info["big"]["bytes"] - info["small"]["bytes"]
        extra_pixels = (sum(info["big"]["images"].values()) - sum(info["small"]["images"].values())
                        ) * a.width * a.height * 3
        wk = cell("big", "workers_peak") / max(1, cell("small", "workers_peak"))
        how = f"medians of {a.repeats} runs each, interleaved" if a.repeats > 1 else "one run each"
        body = "\n".join([
            f"`python benchmarks/bench_driver_memory.py`: two generated JPEG trees ({a.width}x"
            f"{a.height}, {a.classes} classes), the big one {a.scale}x the small, prepared with "
            f"`--row-group-size 64 --jobs 2`; a `ps-train` run on each in a subprocess (resnet20 "
            f"at 32x32, {a.workers} workers, 1 shard, batch {a.batch_size}, the same {a.steps} "
            f"steps per worker, `--eval-every 5 --eval-images {a.val_images}`, local Ray). The "
            f"driver's own RSS sampled every 0.1 s from start to exit; "
            f"{how}. "
            f"Machine: {machine()}; load average {load:.1f} when it started.", "",
            "| data set | train images | MiB on disk (Parquet) | driver peak RSS MiB | "
            "driver median RSS MiB | ratio big/small |",
            "| --- | ---: | ---: | ---: | ---: | --- |", *rows, "",
            f"The prepared data is {disk:.1f}x larger on disk, and the driver's peak RSS "
            f"{cell('big', 'peak') / cell('small', 'peak'):.2f}x: it holds the manifest and the "
            f"list of row-group pieces ({info['small']['pieces']} and "
            f"{info['big']['pieces']} here, both splits), never pixels. For reference, the peak "
            f"summed RSS of the Ray worker processes (actors and their DataLoader processes, "
            f"shared pages counted in each): "
            f"{cell('small', 'workers_peak') / MiB:.0f} MiB small, "
            f"{cell('big', 'workers_peak') / MiB:.0f} MiB big ({wk:.2f}x). What the table can see: "
            f"a driver that held the big set's extra encoded bytes would be "
            f"{extra_bytes / MiB:.0f} MiB larger (peak ratio about "
            f"{(cell('small', 'peak') + extra_bytes) / cell('small', 'peak'):.2f}), its extra "
            f"images decoded to {a.width}x{a.height} uint8 {extra_pixels / MiB:.0f} MiB (about "
            f"{(cell('small', 'peak') + extra_pixels) / cell('small', 'peak'):.2f})."])
        print(body)
        if a.write:
            write_section("Driver memory against the data set's size", body)
    finally:
        if a.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

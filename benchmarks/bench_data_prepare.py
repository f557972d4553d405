"""`ps-train data prepare` throughput (images/s) on a generated tree of JPEGs, --jobs 1 and 2.

The tree: --images JPEGs of --size x --size (a colour gradient plus noise, quality 90, about the
bytes per pixel of a photo) in --classes class folders under train/. Baselines measured in the
same run, on the same files, one process: reading the bytes only (the floor of any prepare), and
the two ways to check an image decodes, Pillow's full `load()` and the `draft` (1/8-scale) load
that prepare uses. Prepare runs are interleaved (jobs 1, jobs 2, jobs 1, ...), each into a fresh
folder, medians of --repeats. The files are in the page cache: a cold disk adds its read time.
--file-size-mb is small (4) so that the tree makes enough files for every process (prepare
spreads files, not images, over its processes).

    python benchmarks/bench_data_prepare.py [--images 2000] [--size 256] [--jobs 1,2] [--no-write]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_section  # noqa: E402

from ps_trainer.data.prepare import Settings, check_image, prepare  # noqa: E402


def make_tree(root: Path, images: int, size: int, classes: int) -> list[Path]:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size]
    paths = []
    for i in range(images):
        c = i % classes
        base = np.stack([x * 255 // size, y * 255 // size, np.full_like(x, 25 * c)], -1)  # (H, W, 3)
        pixels = np.clip(base + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)
        path = root / "train" / f"class{c:02d}" / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def spin(n: int) -> int:
    return sum(range(n))


def cores_speedup(procs: int, repeats: int) -> float:
    """What `procs` processes give on pure CPU work now, against one: the ceiling for prepare's
    --jobs on this machine at this moment (other processes may hold cores)."""
    from concurrent.futures import ProcessPoolExecutor

    times = {}
    for p in (1, procs) * repeats:
        with ProcessPoolExecutor(p) as pool:
            pool.submit(spin, 1).result()  # the processes are up
            t = time.perf_counter()
            list(pool.map(spin, [5_000_000] * 4 * procs))
            times.setdefault(p, []).append(time.perf_counter() - t)
    return statistics.median(times[1]) / statistics.median(times[procs])


def rate(fn, n: int, repeats: int) -> float:
    """Median images/s of `fn()` over `repeats` runs handling `n` images."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return n / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--size", type=int, default=256, help="pixels, square")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--jobs", default="1,2", help="comma-separated --jobs values")
    ap.add_argument("--file-size-mb", type=float, default=4.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    a = ap.parse_args()
    jobs = [int(j) for j in a.jobs.split(",")]
    load = os.getloadavg()[0]  # other processes on the cores make --jobs 2 look worse than it is
    work = Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    try:
        t = time.perf_counter()
        paths = make_tree(work / "src", a.images, a.size, a.classes)
        total = sum(p.stat().st_size for p in paths)
        print(f"generated {a.images} JPEGs of {a.size}x{a.size} ({total / a.images / 1024:.1f} KiB "
              f"each) in {time.perf_counter() - t:.1f} s", flush=True)

        def full_load():
            for p in paths:
                with Image.open(io.BytesIO(p.read_bytes())) as im:
                    im.load()

        base = {"read the bytes only": rate(lambda: [p.read_bytes() for p in paths], a.images,
                                            a.repeats),
                "check: Pillow full load()": rate(full_load, a.images, a.repeats),
                "check: draft (1/8 scale) load, as prepare": rate(
                    lambda: [check_image(p.read_bytes()) for p in paths], a.images, a.repeats)}
        runs: dict[int, list[float]] = {j: [] for j in jobs}
        for r in range(a.repeats):
            for j in jobs:
                dst = work / f"dst-{j}-{r}"
                t = time.perf_counter()
                m = prepare(str(work / "src"), str(dst), Settings(file_size_mb=a.file_size_mb),
                            jobs=j, log=lambda s: None, progress=False)
                runs[j].append(time.perf_counter() - t)
                shutil.rmtree(dst)
        files = len(m["splits"]["train"]["files"])
        ceiling = cores_speedup(jobs[-1], a.repeats)
        decode = base["check: draft (1/8 scale) load, as prepare"]
        one = a.images / statistics.median(runs[jobs[0]])
        rows = [f"| {name} | 1 | {v:,.0f} | {v / decode:.2f} |" for name, v in base.items()]
        rows += [f"| `ps-train data prepare --jobs {j}` | {min(j, files)} | "
                 f"{a.images / statistics.median(runs[j]):,.0f} | "
                 f"{a.images / statistics.median(runs[j]) / decode:.2f} |" for j in jobs]
        body = "\n".join([
            f"{a.images} JPEGs of {a.size}x{a.size} ({total / a.images / 1024:.1f} KiB each, "
            f"{a.classes} classes, in the page cache), `--file-size-mb {a.file_size_mb:g}` "
            f"({files} files), `--row-group-size 256`; medians of {a.repeats} runs, prepare runs "
            f"interleaved. Machine: {machine()}; load average {load:.1f} when it started.", "",
            "| what | processes | images/s | x the one-process draft check |",
            "| --- | ---: | ---: | ---: |", *rows, "",
            f"Speed-up of --jobs {jobs[-1]} over --jobs {jobs[0]}: "
            f"{a.images / statistics.median(runs[jobs[-1]]) / one:.2f}x; {jobs[-1]} processes of "
            f"pure CPU work got {ceiling:.2f}x on this machine in the same run. A prepare of the whole "
            f"tree includes listing it, the plan, starting the processes, the sha256 of every "
            f"file and the manifest; reading and checking the images is most of it."])
        print(body)
        if not a.no_write:
            write_section("Data prepare", body)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""The data pipeline against the decoder and the model it feeds (issue 12), all in one run.

On --images generated 500x375 JPEGs (bench_augment's), prepared into Parquet (data/prepare.py):

- (a) raw decode: Pillow's full decode of the same JPEG bytes, one process (the baseline);
  (a') torchvision.io.decode_jpeg on the CPU, where torchvision is installed (an alternative);
- (b) the pipeline: one worker's stream (data/stream.py: read row groups, decode with the draft,
  ResNet scale augmentation to 224, flips, batches of 64) through L DataLoader processes, for
  each L of --loaders: images/s, and per process against (a);
- (c) Ray Data (`ray.data.read_parquet` + `map_batches` with the same decode and transform +
  `streaming_split`), where Ray is installed, at the same process count: the Ray-native
  alternative, measured on the same files;
- (d) resnet50's training images/s of one worker on this machine: on a GPU, bf16 autocast and
  channels_last at batch 128; on a CPU, fp32 at batch 16 with --threads threads;
- the loader processes one worker needs to be fed: (d) / the per-process rate of (b).

    python benchmarks/bench_data_pipeline.py [--images 1500] [--loaders 1,2,4] [--write]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_augment import make_jpegs  # noqa: E402
from common import machine, write_section  # noqa: E402

from ps_trainer.data import manifest  # noqa: E402
from ps_trainer.data.augment import TrainTransform, decode  # noqa: E402
from ps_trainer.data.prepare import Settings, prepare  # noqa: E402
from ps_trainer.data.stream import PartitionStream, StreamBatches  # noqa: E402

BATCH = 64


def make_prepared(root: Path, images: int, jobs: int) -> manifest.Manifest:
    for i, data in enumerate(make_jpegs(images, 500, 375)):
        folder = root / "src" / "train" / f"c{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i}.jpg").write_bytes(data)
    prepare(str(root / "src"), str(root / "data"), Settings(val_fraction=0.0, file_size_mb=16),
            jobs=jobs, log=lambda m: None, progress=False)
    return manifest.load(root / "data")


def all_jpegs(m: manifest.Manifest) -> list[bytes]:
    return [b for p in m.pieces("train") for b in m.read(p).column("image").to_pylist()]


def raw_decode(jpegs: list[bytes]) -> float:
    from PIL import Image

    t = time.perf_counter()
    for data in jpegs:
        img = Image.open(io.BytesIO(data))
        img.load()
        img.convert("RGB")
    return len(jpegs) / (time.perf_counter() - t)


def decode_and_augment(jpegs: list[bytes], transform) -> float:
    """What the pipeline does per image, in a plain loop: its overhead is the rest."""
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    for data in jpegs:
        transform(decode(data, transform.decode_side), rng)
    return len(jpegs) / (time.perf_counter() - t)


def torchvision_decode(jpegs: list[bytes]) -> float | None:
    try:
        from torchvision.io import decode_jpeg
    except Exception:  # noqa: BLE001 - not installed, or its compiled ops do not load
        return None
    tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in jpegs]
    t = time.perf_counter()
    for x in tensors:
        decode_jpeg(x)
    return len(jpegs) / (time.perf_counter() - t)


def pipeline(m: manifest.Manifest, transform, loaders: int, images: int) -> float:
    stream = PartitionStream(str(m.root), m.pieces("train"), 0, 1, 0, BATCH, transform)
    batches = StreamBatches(stream, processes=loaders, prefetch=4)
    next(batches)  # the processes start (spawn) and fill their prefetch: not the steady rate
    n, t = 0, time.perf_counter()
    while n < images:
        n += len(next(batches)[1])
    rate = n / (time.perf_counter() - t)
    batches.close()
    return rate


def ray_data(m: manifest.Manifest, transform, processes: int, images: int) -> float | None:
    try:
        import ray
        import ray.data  # noqa: F401 - needs Ray's data extra: pip install 'ray[data]'
    except ImportError:
        return None
    ray.init(address="local", num_cpus=processes + 1, include_dashboard=False, log_to_driver=False)
    try:
        def augment(batch: dict) -> dict:
            rng = np.random.default_rng(0)
            x = np.stack([transform(decode(b, transform.decode_side), rng) for b in batch["image"]])
            return {"x": x, "label": np.asarray(batch["label"])}

        files = sorted({p.path for p in m.pieces("train")})
        ds = ray.data.read_parquet(files, columns=["image", "label"]).map_batches(
            augment, batch_size=BATCH, concurrency=processes)
        it = ds.streaming_split(1)[0].iter_batches(batch_size=BATCH)
        n, t = 0, None
        for _ in range(max(1, images // BATCH + 2)):  # the data set may be read again: repeat
            for b in it:
                if t is None:
                    t = time.perf_counter()  # after the first batch, as for the DataLoader
                    continue
                n += len(b["label"])
                if n >= images:
                    return n / (time.perf_counter() - t)
            it = ds.streaming_split(1)[0].iter_batches(batch_size=BATCH)
        return n / (time.perf_counter() - t) if t else None
    finally:
        ray.shutdown()


def model_rate(threads: int) -> tuple[float, str]:
    from ps_trainer.models import build

    gpu = torch.cuda.is_available()
    torch.set_num_threads(threads)
    model = build("resnet50", num_classes=1000)
    batch = 128 if gpu else 16
    device = "cuda" if gpu else "cpu"
    if gpu:
        torch.backends.cudnn.benchmark = True
        model = model.to(device, memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(batch, 3, 224, 224, device=device)
    if gpu:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=device)

    def step():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=gpu):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    steps = 30 if gpu else 3
    for _ in range(3 if gpu else 1):
        step()
    if gpu:
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if gpu:
        torch.cuda.synchronize()
    what = (f"{torch.cuda.get_device_name()}, bf16 autocast, channels_last, batch {batch}" if gpu
            else f"CPU, fp32, batch {batch}, {threads} thread(s)")
    return steps * batch / (time.perf_counter() - t), what


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=1500, help="generated JPEGs (default 1500)")
    p.add_argument("--loaders", default="1,2", help="DataLoader process counts (default 1,2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the CPU model step")
    p.add_argument("--repeats", type=int, default=3, help="repeats of each rate; median")
    p.add_argument("--write", action="store_true", help="write the section of docs/benchmarks.md")
    args = p.parse_args()
    loaders = [int(v) for v in args.loaders.split(",")]
    jobs = os.cpu_count() or 1
    transform = TrainTransform(224, kind="resnet", sides=(256, 480))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        m = make_prepared(Path(tmp), args.images, jobs)
        prep = args.images / (time.perf_counter() - t0)
        jpegs = all_jpegs(m)
        med = lambda f: statistics.median(f() for _ in range(args.repeats))  # noqa: E731
        raw = med(lambda: raw_decode(jpegs))
        tv = torchvision_decode(jpegs)
        plain = med(lambda: decode_and_augment(jpegs[:500], transform))
        rates = {L: med(lambda: pipeline(m, transform, L, min(args.images, 64 * 8 * L)))
                 for L in loaders}
        ray_rate = ray_data(m, transform, max(loaders), min(args.images, 64 * 8 * max(loaders)))
    train, what = model_rate(args.threads)
    per_process = {L: r / L for L, r in rates.items()}
    best = max(per_process.values())
    needed = train / best
    rows = [f"Machine: {machine()}. {args.images} generated 500x375 JPEGs (quality 90, about "
            f"{np.mean([len(j) for j in jpegs]) / 1024:.0f} KiB each), prepared with --jobs {jobs} "
            f"at {prep:.0f} images/s (generation included). Medians of {args.repeats}.", "",
            "| what | images/s | per process | x raw decode (one process) |",
            "| --- | ---: | ---: | ---: |",
            f"| (a) Pillow full decode, 1 process | {raw:.0f} | {raw:.0f} | 1.00 |"]
    if tv:
        rows.append(f"| (a') torchvision.io.decode_jpeg (CPU), 1 process | {tv:.0f} | {tv:.0f} | "
                    f"{tv / raw:.2f} |")
    rows.append(f"| (a2) decode (draft) + ResNet crop 224 + flip, a plain loop, 1 process | "
                f"{plain:.0f} | {plain:.0f} | {plain / raw:.2f} |")
    for L, r in rates.items():
        rows.append(f"| (b) stream: read + decode (draft) + ResNet crop 224 + flip, DataLoader "
                    f"{L} process(es) | {r:.0f} | {r / L:.0f} | {r / L / raw:.2f} |")
    if ray_rate:
        L = max(loaders)
        rows.append(f"| (c) Ray Data read_parquet + map_batches + streaming_split, {L} "
                    f"process(es) | {ray_rate:.0f} | {ray_rate / L:.0f} | "
                    f"{ray_rate / L / raw:.2f} |")
    rows += ["", f"(d) resnet50 training, one worker ({what}): **{train:.0f} images/s**, so one "
             f"worker needs **{needed:.1f} loader processes** at {best:.0f} images/s each."]
    text = "\n".join(rows)
    print(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "data_pipeline.json").write_text(json.dumps(
            {"raw": raw, "plain": plain, "torchvision": tv, "pipeline": rates, "ray_data": ray_rate,
             "train": train, "what": what, "needed": needed, "machine": machine()}))
    if args.write:
        write_section("Data pipeline (" + ("GPU" if torch.cuda.is_available() else "CPU") + ")",
                      text)


if __name__ == "__main__":
    main()

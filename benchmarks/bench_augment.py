"""Decode and augmentation throughput (images/s, one process) of ps_trainer/data/augment.py.

On --images generated JPEGs of --width x --height (a colour gradient, shapes and noise, quality
90, in memory): the baseline (a) is Pillow's plain decode, `Image.open(...).convert('RGB')` after
`.load()`; then (b) `decode` with the draft at 224, (c)/(d) decode + TrainTransform inception /
resnet at 224, (e) decode + EvalTransform with 1 crop, and, for scale, (f) 10 crops and (g) 144
crops (on the first --images // 10). Each decodes at the transform's `decode_side`. Rows are
interleaved (a, b, ..., g, a, b, ...), medians of --repeats. Every row includes the decode: the
ratios say what the augmentation costs on top of reading the image.

    python benchmarks/bench_augment.py [--images 200] [--width 500] [--height 375] [--repeats 3]
                                       [--write]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_section  # noqa: E402

from ps_trainer.data.augment import EvalTransform, TrainTransform, decode  # noqa: E402


def make_jpegs(n: int, w: int, h: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:h, 0:w]
    out = []
    for i in range(n):
        blue = np.full_like(x, 11 * i % 256)
        base = np.stack([x * 255 // w, y * 255 // h, blue], -1)  # (H, W, 3)
        noisy = np.clip(base + rng.integers(-20, 21, base.shape), 0, 255).astype(np.uint8)
        img = Image.fromarray(noisy)
        ImageDraw.Draw(img).ellipse((w // 8, h // 6, w // 2 + i % 50, h // 2), fill=(200, 40, 30))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def plain(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img.convert("RGB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=200, help="generated JPEGs (default 200)")
    p.add_argument("--width", type=int, default=500, help="pixels (default 500, ImageNet's usual)")
    p.add_argument("--height", type=int, default=375, help="pixels (default 375)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats, median (default 3)")
    p.add_argument("--write", action="store_true",
                   help="also write the table into docs/benchmarks.md (default: print only)")
    args = p.parse_args()

    jpegs = make_jpegs(args.images, args.width, args.height)
    few = jpegs[:max(1, args.images // 10)]
    inception, resnet = TrainTransform(224, "inception"), TrainTransform(224, "resnet")
    ev1, ev10, ev144 = EvalTransform(224, 1), EvalTransform(224, 10), EvalTransform(224, 144)

    def train(t):
        return lambda: [t(decode(d, t.decode_side), np.random.default_rng(i))
                        for i, d in enumerate(jpegs)]

    def evaluate(t, images):
        return lambda: [t(decode(d, t.decode_side)) for d in images]

    rows = [  # (label, fn, images handled)
        ("(a) Image.open + load + convert('RGB')", lambda: [plain(d) for d in jpegs], len(jpegs)),
        ("(b) decode, draft at 224", lambda: [decode(d, 224) for d in jpegs], len(jpegs)),
        ("(c) decode + TrainTransform inception 224", train(inception), len(jpegs)),
        ("(d) decode + TrainTransform resnet 224", train(resnet), len(jpegs)),
        ("(e) decode + EvalTransform 1 crop", evaluate(ev1, jpegs), len(jpegs)),
        ("(f) decode + EvalTransform 10 crops", evaluate(ev10, jpegs), len(jpegs)),
        ("(g) decode + EvalTransform 144 crops", evaluate(ev144, few), len(few)),
    ]
    for _, fn, _ in rows:  # warm up: imports, page cache, Pillow's codecs
        fn()
    times: dict[str, list[float]] = {label: [] for label, _, _ in rows}
    for _ in range(args.repeats):
        for label, fn, _ in rows:
            t = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - t)
    rates = {label: n / statistics.median(times[label]) for label, _, n in rows}
    base = rates[rows[0][0]]
    kb = sum(map(len, jpegs)) / len(jpegs) / 1024
    lines = [f"{len(jpegs)} JPEGs of {args.width}x{args.height}, quality 90 ({kb:.0f} KiB each), "
             f"one process, median of {args.repeats} interleaved repeats; {machine()}.", "",
             "| step | images/s | vs (a) |", "| --- | ---: | ---: |"]
    lines += [f"| {label} | {rates[label]:,.0f} | {rates[label] / base:.2f} |"
              for label, _, _ in rows]
    body = "\n".join(lines)
    print(body)
    if args.write:
        write_section(f"Decode and augmentation ({args.width}x{args.height} JPEGs)", body)


if __name__ == "__main__":
    main()

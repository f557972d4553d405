"""`ps-train data prepare SRC DST`: image files into Parquet files that workers stream.

Sources, told apart by what SRC holds (the kind is printed and recorded in the manifest):

- `folders-train-val`: ImageNet-style, SRC/train/<class>/*.jpg and, if there, SRC/val/<class>/.
- `folders`: SRC/<class>/*.jpg; a per-class fraction (--val-fraction, default 0.1) is held out
  as val, drawn with --seed.
- `cifar10`, `cifar100`: the binary versions (Krizhevsky 2009): data_batch_1..5.bin and
  test_batch.bin, rows of 1 label byte + 3,072 pixel bytes (CHW, 32x32); train.bin and test.bin,
  rows of a coarse and a fine label byte + 3,072 (the fine label is used). Each image is encoded
  as PNG (lossless); the test batch is the val split.

Classes are the sorted folder names of train, a label its index; images are .jpg .jpeg .png in
any case, other files are counted and left out. JPEG and PNG bytes are stored as they are, never
re-encoded. DST gets `<split>-NNNNN.parquet` files of whole row groups (--row-group-size images,
the unit a worker reads) of about --file-size-mb each, and manifest.json (read it with
`manifest.load`). Train rows are shuffled with --seed before they are cut, so every row group
mixes the classes.

Invariants:
- The plan (which image goes to which file and row group) is a function of the SRC listing and
  the settings, never of --jobs: a rerun writes the same bytes, so resuming is well defined.
- A file appears under its name only once complete (written to a hidden name, then renamed), and
  is listed in manifest.json, rewritten after each file, with its sha256. A rerun of the same
  command keeps the files whose plan and sha256 match and writes the others.
- A bad image never stops a prepare: it is skipped and listed with Pillow's reason. Each JPEG is
  decoded in full at 1/8 scale (`draft`): every byte of entropy-coded data is still read, so a
  truncated file is caught, in 60-75% of the time of a full-size decode; `verify()` misses
  truncated JPEGs altogether (measured: benchmarks/bench_data_prepare.py).
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing as mp
import os
import re
import shlex
import sys
import time
import warnings
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from ..flags import ArgumentParser
from .files import CIFAR_TEST, CIFAR_TRAIN
from .manifest import FORMAT, MANIFEST, TEMP_PREFIX, read_json, sha256_file, write_json

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")  # compared lower-cased: .JPEG and .PNG count
CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck")  # used when batches.meta.txt is missing
CIFAR100 = ("train.bin", "test.bin")
CIFAR_PNG_BYTES = 2_400  # a typical 32x32 CIFAR image as PNG (bytes): plans the file sizes
LAYOUTS = ("SRC/train/<class>/*.jpg (and SRC/val/<class>/), SRC/<class>/*.jpg, the CIFAR-10 "
           "binary version (data_batch_1.bin ... test_batch.bin) or the CIFAR-100 binary version "
           "(train.bin, test.bin)")
KINDS = {"folders-train-val": "ImageNet-style folders, train/<class>/ and val/<class>/ if any",
         "folders": "one folder per class", "cifar10": "CIFAR-10 binary version",
         "cifar100": "CIFAR-100 binary version (fine labels)"}
OUTPUT = re.compile(r"^(train|val)-\d{5}\.parquet$")


@dataclass(frozen=True)
class Settings:
    """What the output depends on besides SRC (not --jobs): equal settings resume, others refuse."""
    seed: int = 0  # shuffles the train rows and draws the val images of --val-fraction
    val_fraction: float | None = None  # per class, held out as val; None: 0.1 unless SRC has a val
    file_size_mb: float = 128  # per file: few opens per worker, yet enough files for every process
    row_group_size: int = 256  # images per row group, the unit a worker reads (a few batches)

    def validate(self) -> "Settings":
        if self.seed < 0:
            raise ValueError(f"--seed {self.seed}: give 0 or more")
        if self.val_fraction is not None and not 0 <= self.val_fraction < 1:
            raise ValueError(f"--val-fraction {self.val_fraction}: give a fraction in [0, 1)")
        if not self.file_size_mb > 0:
            raise ValueError(f"--file-size-mb {self.file_size_mb}: give a size above 0 (MiB)")
        if self.row_group_size < 1:
            raise ValueError(f"--row-group-size {self.row_group_size}: give 1 or more images")
        return self


@dataclass(frozen=True, slots=True)
class Item:
    path: str  # relative to SRC, '/'-separated; a CIFAR record is 'data_batch_1.bin#123'
    label: int
    size: int  # bytes on disk (for a CIFAR record, CIFAR_PNG_BYTES): plans the file sizes


@dataclass
class Source:
    root: Path
    kind: str  # one of KINDS
    classes: list[str]
    splits: dict[str, list[Item]]  # 'train', and 'val' if any; sorted by path within a class
    own_val: str = ""  # where the source's own val split is ('' if it has none)
    ignored: int = 0  # files in class folders that are not images


# -- reading the source --------------------------------------------------------------------------

def scan(src: str, settings: Settings) -> tuple[Source, Settings]:
    """The source at `src` and the settings with --val-fraction resolved; ValueError naming the
    path for a missing, empty or unknown source, or a class folder without images."""
    root = Path(src).expanduser()
    if not root.exists():
        raise ValueError(f"SRC {src}: no such directory")
    if not root.is_dir():
        raise ValueError(f"SRC {src} is a file; expected a folder holding {LAYOUTS}")
    names = sorted(p.name for p in root.iterdir() if not p.name.startswith("."))
    if not names:
        raise ValueError(f"SRC {src} is empty; expected {LAYOUTS}")
    if set(names) & set(CIFAR_TRAIN + [CIFAR_TEST]):
        source = _cifar(root, 10)
    elif set(names) & set(CIFAR100):
        source = _cifar(root, 100)
    elif (root / "train").is_dir():
        source = _folders(root, root / "train", root / "val")
    elif any((root / n).is_dir() for n in names):
        source = _folders(root, root, None)
    else:
        raise ValueError(f"SRC {src}: unknown layout (it holds {', '.join(names[:4])}"
                         f"{', ...' if len(names) > 4 else ''}); expected {LAYOUTS}")
    fraction = settings.val_fraction
    if fraction is None:
        fraction = 0.0 if source.own_val else 0.1
    elif fraction > 0 and source.own_val:
        raise ValueError(f"--val-fraction {fraction}: SRC has its own val split "
                         f"({source.own_val}); leave --val-fraction out or give 0")
    if fraction > 0:
        source.splits = _hold_out(source.splits["train"], fraction, settings.seed)
    return source, Settings(settings.seed, fraction, settings.file_size_mb,
                            settings.row_group_size)


def _folders(root: Path, train: Path, val: Path | None) -> Source:
    classes = _class_folders(train)
    splits, ignored = {"train": []}, 0
    for label, name in enumerate(classes):
        items, n = _images(root, train / name)
        splits["train"] += [Item(p, label, s) for p, s in items]
        ignored += n
    own_val = ""
    if val is not None and val.exists():
        own_val = f"{val}"
        splits["val"] = []
        for name in _class_folders(val):
            if name not in classes:
                raise ValueError(f"{val / name}: class {name!r} has no folder in {train}; a val "
                                 f"class folder must match a train one")
            items, n = _images(root, val / name)
            splits["val"] += [Item(p, classes.index(name), s) for p, s in items]
            ignored += n
    return Source(root, "folders-train-val" if train != root else "folders", classes, splits,
                  own_val, ignored)


def _class_folders(folder: Path) -> list[str]:
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    dirs = sorted(p.name for p in entries if p.is_dir())
    if not dirs:
        loose = any(p.suffix.lower() in IMAGE_SUFFIXES for p in entries)
        raise ValueError(f"{folder} {'holds images directly' if loose else 'has no folders'}; "
                         f"expected one folder per class, {folder}/<class>/*.jpg")
    return dirs


def _images(root: Path, folder: Path) -> tuple[list[tuple[str, int]], int]:
    """(path relative to root, bytes) of every image under `folder`, sorted; and how many other
    files there are. Hidden files and folders are left out."""
    found, ignored = [], 0
    for top, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.startswith("."):
                continue
            if os.path.splitext(name)[1].lower() not in IMAGE_SUFFIXES:
                ignored += 1
                continue
            path = os.path.join(top, name)
            found.append((Path(path).relative_to(root).as_posix(), os.stat(path).st_size))
    if not found:
        raise ValueError(f"{folder}: class folder with no images ({', '.join(IMAGE_SUFFIXES)}, "
                         f"any case); add its images or remove it")
    return sorted(found), ignored


def _cifar(root: Path, classes: int) -> Source:
    train, test = (CIFAR_TRAIN, [CIFAR_TEST]) if classes == 10 else (["train.bin"], ["test.bin"])
    missing = [f for f in train + test if not (root / f).is_file()]
    if missing:
        raise ValueError(f"SRC {root}: missing {', '.join(missing)} (the CIFAR-{classes} binary "
                         f"version, extracted)")
    names_file = root / ("batches.meta.txt" if classes == 10 else "fine_label_names.txt")
    if names_file.is_file():
        names = [s.strip() for s in names_file.read_text().splitlines() if s.strip()]
    elif classes == 10:
        names = list(CIFAR10_NAMES)
    else:
        raise ValueError(f"SRC {root}: missing {names_file.name} (the class names of CIFAR-100)")
    if len(names) != classes:
        raise ValueError(f"{names_file}: {len(names)} class names, CIFAR-{classes} has {classes}")
    splits = {"train": [], "val": []}
    for split, files in (("train", train), ("val", test)):
        for name in files:
            splits[split] += [Item(f"{name}#{i}", label, CIFAR_PNG_BYTES)
                              for i, label in enumerate(_cifar_labels(root / name, classes))]
    return Source(root, f"cifar{classes}", names, splits, own_val=", ".join(test))


def _cifar_records(path: Path, classes: int) -> np.ndarray:
    width = 3073 if classes == 10 else 3074  # label byte(s) + 32x32x3 pixels
    size = path.stat().st_size
    if size == 0 or size % width:
        raise ValueError(f"{path}: {size:,} bytes, not a multiple of {width:,} (the records of "
                         f"the CIFAR-{classes} binary version): truncated or not CIFAR-{classes}")
    return np.memmap(path, np.uint8, "r").reshape(-1, width)  # (N, width)


def _cifar_labels(path: Path, classes: int) -> list[int]:
    labels = np.array(_cifar_records(path, classes)[:, -3073])  # CIFAR-100: the fine label
    if labels.max() >= classes:
        raise ValueError(f"{path}: record {int(np.argmax(labels >= classes))} has label "
                         f"{labels.max()}, CIFAR-{classes} has {classes} classes")
    return labels.tolist()


def _hold_out(train: list[Item], fraction: float, seed: int) -> dict[str, list[Item]]:
    """Per class, round(n * fraction) images (at most n - 1) drawn with (seed, label) become val:
    adding a class does not change what the others hold out."""
    by_class: dict[int, list[Item]] = {}
    for item in train:
        by_class.setdefault(item.label, []).append(item)
    kept, held = [], []
    for label, items in sorted(by_class.items()):
        k = min(len(items) - 1, round(len(items) * fraction))
        out = set(np.random.default_rng([seed, label]).permutation(len(items))[:k].tolist())
        held += [x for i, x in enumerate(items) if i in out]
        kept += [x for i, x in enumerate(items) if i not in out]
    return {"train": kept, "val": held}


# -- the plan -------------------------------------------------------------------------------------

@dataclass
class FilePlan:
    split: str
    index: int
    row_groups: list[list[Item]]

    @property
    def name(self) -> str:
        return f"{self.split}-{self.index:05d}.parquet"

    @property
    def images(self) -> int:
        return sum(map(len, self.row_groups))

    def fingerprint(self) -> str:
        """sha256 of what goes where: a recorded file is kept only if its plan is unchanged."""
        h = hashlib.sha256()
        for group in self.row_groups:
            h.update(b"--\n" + "".join(f"{x.path}\t{x.label}\t{x.size}\n" for x in group).encode())
        return h.hexdigest()


def plan(source: Source, settings: Settings) -> list[FilePlan]:
    """Train shuffled with the seed (val in listing order), cut into row groups, packed into
    files of about --file-size-mb (at least one row group each)."""
    files, target = [], settings.file_size_mb * 2**20  # bytes
    for split, items in source.splits.items():
        if split == "train":
            items = [items[i] for i in np.random.default_rng(settings.seed).permutation(len(items))]
        rg = settings.row_group_size
        current, size, index = [], 0, 0
        for group in (items[i:i + rg] for i in range(0, len(items), rg)):
            group_size = sum(x.size for x in group)
            if current and size + group_size > target:
                files.append(FilePlan(split, index, current))
                current, size, index = [], 0, index + 1
            current.append(group)
            size += group_size
        if current:
            files.append(FilePlan(split, index, current))
    return files


# -- writing one file (in a worker process) -------------------------------------------------------

def check_image(data: bytes) -> str:
    """'' if `data` decodes in full with Pillow, else why not."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format == "JPEG":  # decode at 1/8 scale: all the data is still read
                im.draft(im.mode, (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
    except UnidentifiedImageError:
        return "not an image Pillow can identify"
    except Exception as e:  # noqa: BLE001 - whatever Pillow raises, the image is skipped
        return str(e) or type(e).__name__
    return ""


def _cifar_png(root: Path, kind: str, item: Item, open_files: dict) -> bytes:
    name, record = item.path.rsplit("#", 1)
    if name not in open_files:
        open_files[name] = _cifar_records(root / name, 10 if kind == "cifar10" else 100)
    pixels = open_files[name][int(record), -3072:].reshape(3, 32, 32).transpose(1, 2, 0)
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(out, "PNG")  # (32, 32, 3) uint8
    return out.getvalue()


def write_file(src: str, kind: str, dst: str, fp: FilePlan, count=None) -> tuple[dict, list]:
    """Write the planned file `fp` into `dst`: each image read and checked, the bad ones skipped,
    each row group written as planned (less its skipped images), then renamed into place.
    Returns its manifest record and its skipped images; adds the images done to `count`."""
    root, final = Path(src), Path(dst) / fp.name
    tmp = final.with_name(f"{TEMP_PREFIX}{fp.name}.{os.getpid()}")
    schema = pa.schema([("image", pa.binary()), ("label", pa.int32()), ("path", pa.string())])
    skipped, row_groups, open_files = [], [], {}
    try:
        with warnings.catch_warnings(), pq.ParquetWriter(
                tmp, schema, compression={"image": "none", "label": "zstd", "path": "zstd"},
                use_dictionary=["label"], write_statistics=["label"]) as writer:
            warnings.simplefilter("ignore")  # Pillow's warnings (odd EXIF, ...): the decode decides
            for group in fp.row_groups:
                rows = {"image": [], "label": [], "path": []}
                for item in group:
                    if kind.startswith("cifar"):
                        data, error = _cifar_png(root, kind, item, open_files), ""
                    else:
                        try:
                            data = (root / item.path).read_bytes()
                            error = check_image(data)
                        except OSError as e:
                            error = e.strerror or str(e)
                    if error:
                        skipped.append({"path": item.path, "error": error, "file": fp.name})
                        continue
                    rows["image"].append(data)
                    rows["label"].append(item.label)
                    rows["path"].append(item.path)
                if rows["image"]:
                    writer.write_table(pa.table(rows, schema=schema), row_group_size=len(group))
                    row_groups.append(len(rows["image"]))
                if count is not None:
                    with count.get_lock():
                        count.value += len(group)
        record = {"name": fp.name, "rows": sum(row_groups), "row_groups": row_groups,
                  "bytes": tmp.stat().st_size, "sha256": sha256_file(tmp), "plan": fp.fingerprint()}
        os.replace(tmp, final)
    except OSError as e:  # reading a source file is handled above: this is DST
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"{final}: could not be written ({e})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return record, skipped


_COUNT = None  # the shared images-done counter, in a pool's worker processes only


def _init_worker(count) -> None:
    global _COUNT
    _COUNT = count


def _write_in_pool(job: tuple) -> tuple[dict, list]:
    return write_file(*job, count=_COUNT)


# -- the whole prepare ----------------------------------------------------------------------------

def prepare(src: str, dst: str, settings: Settings = Settings(), jobs: int = 1, command: str = "",
            log=print, progress: bool = True) -> dict:
    """Prepare `src` into `dst` (see the module docstring) with `jobs` processes; returns the
    manifest. ValueError, before anything is written, for a bad source, settings or DST."""
    if jobs < 1:
        raise ValueError(f"--jobs {jobs}: give 1 or more processes")
    source, settings = scan(src, settings.validate())
    files = plan(source, settings)
    out = Path(dst).expanduser()
    if out.resolve().is_relative_to(source.root.resolve()):
        raise ValueError(f"DST {dst} is inside SRC {src}: it would be read as part of the source "
                         f"next time; give a folder outside it")
    done = _resumable(out, source, settings, files)
    counts = {s: len(items) for s, items in source.splits.items()}
    log(f"source: {source.root} ({source.kind}: {KINDS[source.kind]}), {len(source.classes)} "
        f"classes, " + ", ".join(f"{s} {n:,} images" for s, n in counts.items())
        + (f"; left out {_n(source.ignored, 'other file')}" if source.ignored else ""))
    todo = [f for f in files if f.name not in done]
    procs = max(1, min(jobs, len(todo)))
    log("plan: " + ", ".join(f"{s} {_n(sum(f.split == s for f in files), 'file')}" for s in counts)
        + f" of {settings.row_group_size}-image row groups, about {settings.file_size_mb:g} MiB "
        f"each; " + (f"{len(done)} already written and verified, " if done else "")
        + (f"{len(todo)} to write with {_n(procs, 'process')}" if todo else "nothing to write")
        + (" (one per file: a smaller --file-size-mb gives more files)" if procs < jobs and
           len(todo) else ""))
    write_json(out / MANIFEST, _manifest(source, settings, files, done, command))

    def finished(record: dict, skipped: list) -> None:  # listed at once: a rerun keeps it
        done[record["name"]] = record, skipped
        write_json(out / MANIFEST, _manifest(source, settings, files, done, command))

    try:
        elapsed = _write_all(source, out, todo, procs, finished, progress) if todo else {}
    except KeyboardInterrupt:
        log(f"interrupted: {len(done)} of {len(files)} files are written; run the same command "
            f"again to resume")
        raise
    for p in out.iterdir():  # files of an earlier plan of this DST that this one has not
        if OUTPUT.match(p.name) and p.name not in {f.name for f in files}:
            p.unlink()
    manifest = _manifest(source, settings, files, done, command)
    write_json(out / MANIFEST, manifest)
    _summary(manifest, todo, elapsed, out, log)
    return manifest


def _write_all(source: Source, out: Path, todo: list[FilePlan], procs: int, finished,
               progress: bool) -> dict[str, float]:
    """Write `todo` with `procs` processes, one file per task, calling `finished(record, skipped)`
    as each completes; returns the seconds each split took (one split after the other)."""
    elapsed: dict[str, float] = {}
    ctx = mp.get_context()
    count = ctx.Value("q", 0)  # images done, added to by the workers after each row group
    bar = _Progress(sum(f.images for f in todo), enabled=progress)
    pool = ProcessPoolExecutor(procs, ctx, initializer=_init_worker, initargs=(count,))
    pending: set = set()
    try:
        for split in source.splits:
            mine = [f for f in todo if f.split == split]
            if not mine:
                continue
            start = time.perf_counter()
            pending = {pool.submit(_write_in_pool, (str(source.root), source.kind, str(out), f))
                       for f in mine}
            while pending:
                wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                for future in [f for f in pending if f.done()]:
                    finished(*future.result())
                    pending.discard(future)
                bar.update(count.value)
            elapsed[split] = time.perf_counter() - start
    except BrokenProcessPool:
        raise RuntimeError(f"a process writing {out} died (out of memory? fewer --jobs or a smaller "
                           f"--file-size-mb need less); the finished files are kept: run the "
                           f"same command again to resume") from None
    except KeyboardInterrupt:  # the files being written stop (Ctrl-C reached them too) or finish
        pool.shutdown(wait=True, cancel_futures=True)
        for future in pending:
            if not future.cancelled() and future.exception() is None:
                finished(*future.result())
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    return elapsed


def _resumable(out: Path, source: Source, settings: Settings, files: list[FilePlan]) -> dict:
    """{name: (record, skipped)} of the files in `out` that a rerun keeps: same plan, same sha256.
    ValueError if `out` is not empty and not a prepare of this source with these settings."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"DST {out} is a file; give a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    entries = [p for p in out.iterdir() if not p.name.startswith(TEMP_PREFIX)]
    if not entries:
        return {}
    if not (out / MANIFEST).is_file():
        raise ValueError(f"DST {out} is not empty and holds no {MANIFEST} (it is not an earlier "
                         f"prepare); give a new or empty folder")
    old = read_json(out)
    try:
        theirs = [f"SRC {old['source']['path']}"] if old["source"]["path"] != str(
            source.root.resolve()) else []
        theirs += [f"--{k.replace('_', '-')} {old['settings'].get(k)}"
                   for k, v in asdict(settings).items() if old["settings"].get(k) != v]
        records = [r for s in old["splits"].values() for r in s["files"]
                   if {"name", "plan", "bytes", "sha256"} <= set(r)]
        skipped: dict[str, list] = {}
        for s in old["skipped"]:
            skipped.setdefault(s["file"], []).append(s)
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{out / MANIFEST}: not a whole manifest (at {e}); give a new or empty "
                         f"folder") from None
    if theirs:
        raise ValueError(f"DST {out} holds a prepare with {', '.join(theirs)}; give the same SRC "
                         f"and settings to resume it, or a new or empty folder")
    for p in out.glob(f"{TEMP_PREFIX}*"):  # left by a prepare that was stopped
        p.unlink()
    by_name, done = {f.name: f for f in files}, {}
    for r in records:
        path = out / r["name"]
        if (r["name"] in by_name and by_name[r["name"]].fingerprint() == r["plan"]
                and path.is_file() and path.stat().st_size == r["bytes"]
                and sha256_file(path) == r["sha256"]):
            done[r["name"]] = r, skipped.get(r["name"], [])
    return done


def _manifest(source: Source, settings: Settings, files: list[FilePlan], done: dict,
              command: str) -> dict:
    """The manifest of the files `done` so far; the class counts once all `files` are done."""
    skipped = sorted((s for _, sk in done.values() for s in sk), key=lambda s: s["path"])
    complete, bad = len(done) == len(files), {s["path"] for s in skipped}
    splits = {}
    for split, items in source.splits.items():
        records = [done[f.name][0] for f in files if f.split == split and f.name in done]
        splits[split] = {"images": sum(r["rows"] for r in records),
                         "bytes": sum(r["bytes"] for r in records)}
        if complete:
            labels = Counter(x.label for x in items if x.path not in bad)
            splits[split]["class_counts"] = {c: labels[i] for i, c in enumerate(source.classes)}
        splits[split]["files"] = records
    return {"format": FORMAT, "complete": complete, "command": command,
            "source": {"path": str(source.root.resolve()), "kind": source.kind,
                       "ignored_files": source.ignored},
            "settings": asdict(settings), "classes": source.classes, "splits": splits,
            "skipped": skipped}


def _summary(manifest: dict, todo: list[FilePlan], elapsed: dict, out: Path, log) -> None:
    skipped = manifest["skipped"]
    if skipped:
        shown = ", ".join(f"{s['path']} ({s['error']})" for s in skipped[:3])
        log(f"skipped {_n(len(skipped), 'image')} that could not be decoded"
            + (f" (all listed under 'skipped' in {out / MANIFEST})" if len(skipped) > 3 else "")
            + f": {shown}{', ...' if len(skipped) > 3 else ''}")
    log(f"{'split':8} {'images':>10} {'classes':>8} {'files':>6} {'MiB':>10} {'skipped':>8} "
        f"{'images/s':>9}")
    for split, s in manifest["splits"].items():
        done = sum(f.images for f in todo if f.split == split)  # this run's, skipped ones too
        rate = f"{done / elapsed[split]:9,.0f}" if split in elapsed else f"{'-':>9}"
        log(f"{split:8} {s['images']:>10,} {sum(n > 0 for n in s['class_counts'].values()):>8} "
            f"{len(s['files']):>6} {s['bytes'] / 2**20:>10,.1f} "
            f"{sum(x['file'].startswith(split + '-') for x in skipped):>8} {rate}")
    log(f"wrote {out / MANIFEST}")


def _n(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "es" if noun.endswith("s") else "s")


class _Progress:
    """Images done of `total` on stderr: one redrawn line on a terminal, a line every `every` s
    in a log. (trainer/progress.py is the training one; data does not import the trainer.)"""

    def __init__(self, total: int, enabled: bool = True, every: float = 10.0, stream=None):
        self.total, self.enabled, self.every = max(1, total), enabled, every
        self.stream = stream or sys.stderr
        self.tty, self.start, self.last = self.stream.isatty(), time.perf_counter(), 0.0

    def update(self, done: int) -> None:
        elapsed = time.perf_counter() - self.start
        if not self.enabled or (not self.tty and elapsed - self.last < self.every):
            return
        self.last = elapsed
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else float("nan")
        line = (f"prepare: {done:,}/{self.total:,} images ({100 * done / self.total:.0f}%), "
                f"{rate:,.0f} images/s, eta {eta:.0f} s")
        self.stream.write(f"\r{line:80}" if self.tty else line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


def main(argv: list[str]) -> int:
    """`ps-train data prepare SRC DST [flags]`; `argv` is what follows `prepare`."""
    p = ArgumentParser(prog="ps-train data prepare", description="Convert an image folder tree or "
                       "CIFAR-10/100 (binary version) into Parquet files for streaming, with a "
                       "manifest.json. A rerun of the same command resumes.")
    p.add_argument("src", metavar="SRC", help=f"the source: {LAYOUTS}")
    p.add_argument("dst", metavar="DST", help="output folder: new, empty, or an earlier prepare "
                   "of the same SRC with the same settings (resumed)")
    p.add_argument("--val-fraction", type=float, default=None, help="per class, held out of "
                   "train as val (default: 0 where SRC has its own val split, SRC/val or CIFAR's "
                   "test batch; 0.1 otherwise)")
    p.add_argument("--seed", type=int, default=0, help="shuffles the train rows and draws the "
                   "val images (default 0)")
    p.add_argument("--file-size-mb", type=float, default=128, help="about this many MiB per "
                   "Parquet file (default 128)")
    p.add_argument("--row-group-size", type=int, default=256, help="images per row group, the "
                   "unit a worker reads (default 256)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes, one file "
                   f"each at a time (default: the {os.cpu_count()} cores)")
    a = p.parse_args(argv)
    settings = Settings(a.seed, a.val_fraction, a.file_size_mb, a.row_group_size)
    prepare(a.src, a.dst, settings, jobs=a.jobs, progress=True,
            command=shlex.join(["ps-train", "data", "prepare", *argv]))
    return 0

"""The manifest of a prepared data folder: what `ps-train data prepare` wrote, and how to read it.

A prepared folder DST holds `manifest.json` and Parquet files `<split>-NNNNN.parquet` (splits
`train` and, where there is one, `val`). Each Parquet row is one image: `image` (the encoded
JPEG/PNG bytes), `label` (int32, an index into `classes`) and `path` (where it came from, relative
to the source). A worker streams whole row groups, so the unit handed out is a `Piece`: one row
group of one file (DistBelief, Dean et al. 2012: each model replica reads its own data shard).

Invariants, checked by `load`:
- `complete` is true only once every file is written; an unfinished prepare is resumed by
  running the same command again, never read.
- every listed file exists with the recorded size (and, with `checksums=True`, sha256), and
  its `row_groups` sum to its `rows`; the rows of a split's files sum to its `images`.

    m = manifest.load("data/imagenet")
    for piece in m.pieces("train"):  # [(path, row_group, rows), ...]
        table = m.read(piece)        # pyarrow.Table: image, label, path
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import NamedTuple

FORMAT = "ps-trainer-prepared/1"
MANIFEST = "manifest.json"
TEMP_PREFIX = ".prepare-tmp-"  # hidden, half-written files; never listed, removed on a rerun


class Piece(NamedTuple):
    path: str  # absolute path of the Parquet file
    row_group: int  # index of the row group in that file
    rows: int  # images in that row group


def sha256_file(path: str | os.PathLike, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    fs, inner = filesystem(str(path))
    with fs.open_input_stream(inner) as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def file_size(path: str) -> int | None:
    """Bytes of the file at `path` (local or URI); None if there is none."""
    import pyarrow.fs as pafs

    fs, inner = filesystem(path)
    info = fs.get_file_info(inner)
    return info.size if info.type == pafs.FileType.File else None


def open_parquet(path: str):
    """A pyarrow ParquetFile at `path` (local or URI)."""
    import pyarrow.parquet as pq

    if not _remote(path):
        return pq.ParquetFile(path)
    fs, inner = filesystem(path)
    return pq.ParquetFile(fs.open_input_file(inner))


def write_json(path: str | os.PathLike, data: dict) -> None:
    """Write `data` to `path` atomically: a reader sees the old file or the new one, never half."""
    path = Path(path)
    tmp = path.with_name(f"{TEMP_PREFIX}{path.name}.{os.getpid()}")
    tmp.write_text(_dumps(data) + "\n")
    os.replace(tmp, path)


def _dumps(x, indent: int = 0) -> str:
    """JSON, one level per line, but short objects and lists of numbers or strings on one line
    (a file's row groups, a skipped image)."""
    flat = json.dumps(x)
    if (not isinstance(x, (dict, list)) or len(flat) <= 100
            or isinstance(x, list) and not any(isinstance(v, (dict, list)) for v in x)):
        return flat
    pad = " " * (indent + 1)
    lines = [f"{pad}{json.dumps(k)}: {_dumps(v, indent + 1)}" for k, v in x.items()] if isinstance(
        x, dict) else [pad + _dumps(v, indent + 1) for v in x]
    brackets = "{}" if isinstance(x, dict) else "[]"
    return brackets[0] + "\n" + ",\n".join(lines) + "\n" + " " * indent + brackets[1]


def _remote(dst) -> bool:
    return "://" in str(dst)


def filesystem(location: str):
    """(pyarrow FileSystem, path in it) of a local path or a filesystem URI (s3://, gs://,
    hdfs://, file://): what the readers open files with."""
    import pyarrow.fs as pafs

    if _remote(location):
        return pafs.FileSystem.from_uri(str(location))
    return pafs.LocalFileSystem(), str(location)


def read_json(dst: str | os.PathLike) -> dict:
    """The manifest of `dst` as written, complete or not; ValueError if it is not one of ours."""
    path = Path(dst) / MANIFEST if not _remote(dst) else f"{str(dst).rstrip('/')}/{MANIFEST}"
    try:
        if _remote(dst):
            fs, inner = filesystem(str(path))
            with fs.open_input_stream(inner) as f:
                data = json.loads(f.read())
        else:
            data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{dst}: not a prepared data folder (no {MANIFEST}); make one with "
                         f"`ps-train data prepare SRC {dst}`") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not readable as JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else None
        raise ValueError(f"{path}: format {found!r}, expected {FORMAT!r} (written by "
                         f"`ps-train data prepare`)")
    return data


class Manifest:
    """A prepared folder, checked (see the module docstring). `data` is the manifest as written."""

    def __init__(self, root: str | os.PathLike, data: dict):
        self.root, self.data = (str(root).rstrip("/") if _remote(root) else Path(root)), data

    def location(self, name: str) -> str:
        """Where file `name` of this folder is: a local path or a URI, as the folder's."""
        return f"{self.root}/{name}" if _remote(self.root) else str(self.root / name)

    @property
    def classes(self) -> list[str]:
        return list(self.data["classes"])

    @property
    def splits(self) -> list[str]:
        return list(self.data["splits"])

    def images(self, split: str) -> int:
        return self._split(split)["images"]

    def files(self, split: str) -> list[dict]:
        """The file records of `split`: name, rows, row_groups, bytes, sha256."""
        return list(self._split(split)["files"])

    def pieces(self, split: str) -> list[Piece]:
        """Every row group of `split`, in file order: the units a worker reads whole."""
        return [Piece(self.location(f["name"]), i, n)
                for f in self.files(split) for i, n in enumerate(f["row_groups"])]

    def read(self, piece: Piece):
        """One row group as a pyarrow.Table with columns image, label, path."""
        return open_parquet(piece.path).read_row_group(piece.row_group)

    def check(self, checksums: bool = False) -> None:
        """ValueError naming the first file that is missing, of the wrong size or (with
        `checksums`) of the wrong sha256, or the first count that does not add up."""
        fix = "rerun the `ps-train data prepare` that made it (it redoes bad files)"
        for split in self.splits:
            files = self.files(split)
            if sum(f["rows"] for f in files) != self.images(split):
                raise ValueError(f"{self.root / MANIFEST}: the files of {split} hold "
                                 f"{sum(f['rows'] for f in files)} rows, not the "
                                 f"{self.images(split)} images it lists")
            for f in files:
                path = self.location(f["name"])
                if sum(f["row_groups"]) != f["rows"]:
                    raise ValueError(f"{path}: row groups of {sum(f['row_groups'])} rows in "
                                     f"all, not {f['rows']}")
                size = file_size(path)
                if size is None:
                    raise ValueError(f"{path}: missing; {fix}")
                if size != f["bytes"]:
                    raise ValueError(f"{path}: {size:,} bytes, the manifest says "
                                     f"{f['bytes']:,}; {fix}")
                if checksums and sha256_file(path) != f["sha256"]:
                    raise ValueError(f"{path}: sha256 differs from the manifest's; {fix}")

    def _split(self, split: str) -> dict:
        if split not in self.data["splits"]:
            raise ValueError(f"{self.root}: no split {split!r}; it has "
                             f"{', '.join(self.splits) or 'none'}")
        return self.data["splits"][split]


def load(dst: str | os.PathLike, checksums: bool = False) -> Manifest:
    """The prepared folder `dst`, checked: complete, every file present with its recorded size
    (and sha256 with `checksums`, which reads every file)."""
    if not _remote(dst) and not Path(dst).is_dir():
        raise ValueError(f"{dst}: no such directory (make it with `ps-train data prepare SRC "
                         f"{dst}`)")
    data = read_json(dst)
    if not data.get("complete"):
        raise ValueError(f"{dst}: its prepare did not finish; run the same `{data.get('command')}` "
                         f"again to resume it")
    m = Manifest(dst, data)
    m.check(checksums)
    return m

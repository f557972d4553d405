"""Checkpoints: every shard's full state in one `.npz`, written atomically, verified on load.

Layout, under the run directory (a local path or any pyarrow filesystem URI, e.g. `s3://b/run`):

    checkpoints/ckpt-000007.npz    arrays `s<i>.<name>` per shard, and `meta`: a JSON string
    checkpoints/LATEST.json        {"format", "file", "sha256", "bytes", ...}: the one to load

Invariants:
- **Atomic.** The `.npz` is written under a temporary name and moved into place, then LATEST.json
  the same way. A crash at any moment leaves LATEST pointing at a complete checkpoint (the
  previous one), never at half a file.
- **Verified.** LATEST records the SHA-256 of the `.npz`; a corrupt or truncated file is refused
  with both digests, before anything is loaded into a shard.
- **No code execution on load.** Only numpy arrays (`np.load(allow_pickle=False)`) and JSON.
- **Of this model.** `meta` holds the model name and the layout fingerprint (names and shapes of
  every parameter); a checkpoint of another model or layout is refused, naming both.
- Shards are saved one after the other without stopping the workers, so under async SGD the
  checkpoint is a state each shard was in, not one global instant; that is what async SGD is.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time

import numpy as np
import pyarrow.fs as pafs

FORMAT = 1
ARRAYS = ("params", "momentum", "average", "buffers", "aggregate")


def _fs(uri: str) -> tuple[pafs.FileSystem, str]:
    fs, path = pafs.FileSystem.from_uri(str(uri)) if "://" in str(uri) else \
        (pafs.LocalFileSystem(), str(uri))
    return fs, path.rstrip("/")


def _write_atomic(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{time.time_ns()}"
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    fs.move(tmp, path)  # a rename on local disks; object stores put the object whole


def _read(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


def pack(shard_states: list[dict], meta: dict, extra: dict | None = None) -> bytes:
    """One `.npz` (bytes) holding every shard's `ShardState.state_dict()`, `meta`, and `extra`
    arrays (the simulator's workers)."""
    arrays, scalars = {f"x.{k}": np.asarray(v) for k, v in (extra or {}).items()}, []
    for sd in shard_states:
        i = sd["index"]
        for name in ARRAYS:
            if sd.get(name) is not None:
                arrays[f"s{i}.{name}"] = np.asarray(sd[name], np.float32)
        workers = sorted(sd["bn_slots"])
        arrays[f"s{i}.bn_workers"] = np.asarray(workers, np.int64)
        arrays[f"s{i}.bn_slots"] = (np.stack([sd["bn_slots"][w] for w in workers]) if workers
                                    else np.zeros((0, sd["buffers"].shape[0]), np.float32))
        ms = sd["policy"].get("mean_square")
        if ms is not None:
            arrays[f"s{i}.policy_mean_square"] = np.asarray(ms, np.float32)
        for v, a in (sd.get("reads") or {}).items():  # DC-ASGD's kept reads, by version
            arrays[f"s{i}.read.{int(v)}"] = np.asarray(a, np.float32)
        scalars.append({k: v for k, v in sd.items()
                        if k not in ARRAYS and k not in ("bn_slots", "policy", "reads")})
    arrays["meta"] = np.array(json.dumps({**meta, "format": FORMAT, "shards": scalars}))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def unpack(data: bytes) -> tuple[list[dict], dict]:
    z = np.load(io.BytesIO(data), allow_pickle=False)
    meta = json.loads(str(z["meta"]))
    meta["extra"] = {k[2:]: z[k] for k in z.files if k.startswith("x.")}
    states = []
    for sc in meta.pop("shards"):
        i = sc["index"]
        sd = dict(sc)
        for name in ARRAYS:
            sd[name] = z[f"s{i}.{name}"] if f"s{i}.{name}" in z.files else None
        sd["bn_slots"] = {int(w): z[f"s{i}.bn_slots"][j] for j, w in enumerate(z[f"s{i}.bn_workers"])}
        ms = z[f"s{i}.policy_mean_square"] if f"s{i}.policy_mean_square" in z.files else None
        sd["policy"] = {"mean_square": ms}
        prefix = f"s{i}.read."
        sd["reads"] = {int(k[len(prefix):]): z[k] for k in z.files if k.startswith(prefix)}
        states.append(sd)
    return states, meta


def save(run_dir: str, shard_states: list[dict], meta: dict, keep: int = 2,
         extra: dict | None = None) -> str:
    """Write checkpoint number `meta['sequence']`; returns its file name. Keeps the last `keep`."""
    fs, root = _fs(run_dir)
    folder = f"{root}/checkpoints"
    fs.create_dir(folder, recursive=True)
    name = f"ckpt-{int(meta['sequence']):06d}.npz"
    data = pack(shard_states, meta, extra)
    _write_atomic(fs, f"{folder}/{name}", data)
    latest = {"format": FORMAT, "file": name, "sha256": hashlib.sha256(data).hexdigest(),
              "bytes": len(data), "written": time.time(), "sequence": int(meta["sequence"]),
              "versions": [int(sd["version"]) for sd in shard_states]}
    _write_atomic(fs, f"{folder}/LATEST.json", json.dumps(latest, indent=1).encode())
    old = sorted(i.path for i in fs.get_file_info(pafs.FileSelector(folder))
                 if i.base_name.startswith("ckpt-") and i.base_name.endswith(".npz"))
    for path in old[:-keep]:
        fs.delete_file(path)
    return name


NETWORK_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "lustre", "gpfs", "ceph", "glusterfs",
                       "beegfs", "9p", "virtiofs")


def shared(location: str) -> bool:
    """Can every node of a cluster read checkpoints at `location`? True for object stores and
    other remote filesystems (`s3://`, `gs://`, `hdfs://`), and for local paths on a network
    file system (by /proc/mounts); False for a path on this machine's own disk."""
    scheme = str(location).split("://")[0] if "://" in str(location) else ""
    if scheme and scheme != "file":
        return True
    path = os.path.realpath(str(location).split("://", 1)[-1])
    best, kind = "", ""
    try:
        with open("/proc/mounts") as f:
            for line in f:
                _, mount, fstype = line.split()[:3]
                if (path == mount or path.startswith(mount.rstrip("/") + "/")) and len(mount) > len(best):
                    best, kind = mount, fstype
    except OSError:
        return False
    return kind in NETWORK_FILESYSTEMS or kind.startswith("fuse.")


def exists(run_dir: str) -> bool:
    fs, root = _fs(run_dir)
    return fs.get_file_info(f"{root}/checkpoints/LATEST.json").type == pafs.FileType.File


def load(run_dir: str, *, model: str | None = None, fingerprint: str | None = None
         ) -> tuple[list[dict], dict]:
    """The latest checkpoint's shard states and meta, verified; ValueError says what is wrong."""
    fs, root = _fs(run_dir)
    latest_path = f"{root}/checkpoints/LATEST.json"
    if not exists(run_dir):
        raise ValueError(f"{run_dir} has no checkpoint ({latest_path} is missing)")
    try:
        latest = json.loads(_read(fs, latest_path))
    except ValueError as e:
        raise ValueError(f"{latest_path} is corrupt: {e}") from None
    if latest.get("format") != FORMAT:
        raise ValueError(f"checkpoint format {latest.get('format')!r} in {latest_path}; this "
                         f"ps-trainer reads format {FORMAT}")
    path = f"{root}/checkpoints/{latest['file']}"
    try:
        data = _read(fs, path)
    except (OSError, FileNotFoundError) as e:
        raise ValueError(f"checkpoint {path} cannot be read: {e}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != latest["sha256"] or len(data) != latest["bytes"]:
        raise ValueError(f"checkpoint {path} is corrupt or truncated: {len(data)} bytes with sha256 "
                         f"{digest[:16]}..., but LATEST.json recorded {latest['bytes']} bytes with "
                         f"{latest['sha256'][:16]}...; nothing was loaded")
    states, meta = unpack(data)
    if model is not None and meta.get("model") != model or \
            fingerprint is not None and meta.get("fingerprint") != fingerprint:
        raise ValueError(f"checkpoint {path} is of model {meta.get('model')!r} with layout "
                         f"{meta.get('fingerprint')} ({meta.get('num_params')} parameters), but this "
                         f"run builds {model!r} with layout {fingerprint}; nothing was loaded")
    return states, meta

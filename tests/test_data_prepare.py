"""`ps-train data prepare`: real JPEG/PNG trees and CIFAR binary batches made with Pillow and numpy
in tmp_path, prepared into Parquet, read back row by row through `manifest.load`. Every row is
the source image (JPEG/PNG byte for byte, CIFAR pixel for pixel) with its label; a bad image is
skipped and listed; a rerun resumes, rewriting only the files that are missing or wrong."""

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ps_trainer.data import manifest
from ps_trainer.data.files import CIFAR_TEST, CIFAR_TRAIN
from ps_trainer.data.prepare import Settings, main, prepare

CLASSES = ("cat", "dog", "fox")


def image_tree(root, per_class=12, val=2, classes=CLASSES):
    """root/<class>/ (val=None) or root/train/<class>/ + root/val/<class>/: one distinct colour
    per image, as .jpg, .JPEG and .png, a notes.txt left out, and a truncated train/cat/bad.jpg."""
    splits = {"": per_class} if val is None else {"train/": per_class, "val/": val}
    for prefix, n in splits.items():
        for c, name in enumerate(classes):
            folder = root / f"{prefix}{name}"
            folder.mkdir(parents=True)
            for i in range(n):
                colour = (40 + 80 * c, 10 + 19 * i, 200 - 15 * i)
                ext, fmt = [(".jpg", "JPEG"), (".JPEG", "JPEG"), (".png", "PNG")][i % 3]
                Image.new("RGB", (24, 16), colour).save(folder / f"{prefix[:1]}{i:02d}{ext}", fmt)
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "JPEG", quality=90)
    bad = root / ("cat" if val is None else "train/cat") / "bad.jpg"
    bad.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / ("dog" if val is None else "train/dog") / "notes.txt").write_text("not an image")
    return root


def rows(m, split):
    """(path, label, image bytes) of every row of `split`, in file and row group order."""
    out = []
    for piece in m.pieces(split):
        t = m.read(piece).to_pydict()
        assert len(t["path"]) == piece.rows
        out += list(zip(t["path"], t["label"], t["image"]))
    return out


def run(src, dst, **settings):
    lines = []
    jobs = settings.pop("jobs", 2)
    prepare(str(src), str(dst), Settings(**settings), jobs=jobs, command="test", log=lines.append,
            progress=False)
    return manifest.load(dst, checksums=True), "\n".join(lines)


def test_folder_tree_rows_are_the_source_files_byte_for_byte(tmp_path):
    src = image_tree(tmp_path / "src")
    m, out = run(src, tmp_path / "dst", row_group_size=4, file_size_mb=0.004)
    d = m.data
    assert d["source"]["kind"] == "folders-train-val" and "folders-train-val" in out
    assert d["source"]["ignored_files"] == 1 and m.classes == list(CLASSES)
    assert m.images("train") == 36 and m.images("val") == 6  # 37 train files, bad.jpg skipped
    assert d["splits"]["train"]["class_counts"] == {"cat": 12, "dog": 12, "fox": 12}
    assert d["splits"]["val"]["class_counts"] == {"cat": 2, "dog": 2, "fox": 2}
    for split, n in (("train", 36), ("val", 6)):
        got = rows(m, split)
        assert len(got) == n == len({p for p, _, _ in got})
        for path, label, data in got:
            assert data == (src / path).read_bytes()  # stored as is, never re-encoded
            assert label == CLASSES.index(path.split("/")[1])
        expected = {p.relative_to(src).as_posix() for p in (src / split).rglob("*")
                    if p.suffix.lower() in (".jpg", ".jpeg", ".png")} - {"train/cat/bad.jpg"}
        assert {p for p, _, _ in got} == expected
    [bad] = d["skipped"]
    assert bad["path"] == "train/cat/bad.jpg" and "truncated" in bad["error"].lower()
    assert "skipped 1 image that could not be decoded: train/cat/bad.jpg (" in out
    assert any(line.split()[:2] == ["train", "36"] for line in out.splitlines())


def test_row_groups_have_the_requested_size_and_files_hold_whole_ones(tmp_path):
    m, _ = run(image_tree(tmp_path / "src"), tmp_path / "dst", row_group_size=4,
               file_size_mb=0.004)
    sizes = []
    for f in m.files("train"):
        meta = pq.ParquetFile(m.root / f["name"]).metadata
        assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == f["row_groups"]
        sizes += f["row_groups"]
    assert len(m.files("train")) >= 3 and sum(sizes) == 36
    # 37 planned = 9 groups of 4 + 1; the skipped image takes one out of one group
    assert sorted(sizes) in ([1, 3] + [4] * 8, [4] * 9)


def test_train_rows_are_shuffled_and_the_shuffle_follows_the_seed(tmp_path):
    src = image_tree(tmp_path / "src")
    m, _ = run(src, tmp_path / "a", row_group_size=6)
    labels = [label for _, label, _ in rows(m, "train")]
    assert labels != sorted(labels)
    assert sum(a != b for a, b in zip(labels, labels[1:])) >= 12  # sorted by class: 2 changes
    assert len(set(m.read(m.pieces("train")[0])["label"].to_pylist())) >= 2
    same, _ = run(src, tmp_path / "b", row_group_size=6)
    other, _ = run(src, tmp_path / "c", row_group_size=6, seed=1)
    assert [p for p, _, _ in rows(same, "train")] == [p for p, _, _ in rows(m, "train")]
    assert [p for p, _, _ in rows(other, "train")] != [p for p, _, _ in rows(m, "train")]


def test_val_fraction_holds_out_per_class_disjoint_from_train(tmp_path):
    src = image_tree(tmp_path / "src", val=None)  # src/<class>/: 12 images, cat has bad.jpg too
    m, out = run(src, tmp_path / "a", val_fraction=0.25)
    assert m.data["source"]["kind"] == "folders" and m.data["settings"]["val_fraction"] == 0.25
    train, val = ({p for p, _, _ in rows(m, s)} for s in ("train", "val"))
    assert not train & val
    per_class = m.data["splits"]["val"]["class_counts"]
    # round(0.25 * 12) = 3 per class; cat has 13 files, round(3.25) = 3, bad.jpg may be one
    assert per_class["dog"] == per_class["fox"] == 3 and per_class["cat"] in (2, 3)
    assert m.images("train") + m.images("val") == 36
    for c in CLASSES:
        assert all(p.startswith(f"{c}/") for p, label, _ in rows(m, "val") if label == CLASSES.index(c))
    again, _ = run(src, tmp_path / "b", val_fraction=0.25)
    other, _ = run(src, tmp_path / "c", val_fraction=0.25, seed=3)
    assert {p for p, _, _ in rows(again, "val")} == val != {p for p, _, _ in rows(other, "val")}
    default, _ = run(src, tmp_path / "d")  # no own val split: 0.1 by default, 1 per class
    assert default.data["settings"]["val_fraction"] == 0.1
    assert sum(default.data["splits"]["val"]["class_counts"].values()) == 3


def fake_cifar10(root, records=7):
    rng = np.random.default_rng(0)
    root.mkdir()
    data = {}
    for name in CIFAR_TRAIN + [CIFAR_TEST]:
        rec = rng.integers(0, 256, (records, 3073), dtype=np.uint8)
        rec[:, 0] %= 10
        rec.tofile(root / name)
        data[name] = rec
    (root / "batches.meta.txt").write_text("\n".join(f"class{i}" for i in range(10)) + "\n\n")
    return data


def test_cifar10_rows_decode_to_the_records_pixel_for_pixel(tmp_path):
    records = fake_cifar10(tmp_path / "c")
    m, out = run(tmp_path / "c", tmp_path / "dst", row_group_size=8)
    assert m.data["source"]["kind"] == "cifar10" and "cifar10" in out
    assert m.classes == [f"class{i}" for i in range(10)]
    assert m.images("train") == 35 and m.images("val") == 7 and not m.data["skipped"]
    for split in ("train", "val"):
        got = rows(m, split)
        assert len(got) == m.images(split)
        for path, label, data in got:
            name, i = path.split("#")
            assert (name == CIFAR_TEST) == (split == "val")
            rec = records[name][int(i)]
            assert data[:8] == b"\x89PNG\r\n\x1a\n" and label == rec[0]
            pixels = np.asarray(Image.open(io.BytesIO(data)))  # (32, 32, 3)
            assert np.array_equal(pixels, rec[1:].reshape(3, 32, 32).transpose(1, 2, 0))


def test_cifar100_uses_the_fine_label(tmp_path):
    root = tmp_path / "c100"
    root.mkdir()
    rng = np.random.default_rng(1)
    recs = {}
    for name in ("train.bin", "test.bin"):
        rec = rng.integers(0, 256, (6, 3074), dtype=np.uint8)
        rec[:, 0] %= 20  # coarse
        rec[:, 1] %= 100  # fine
        rec.tofile(root / name)
        recs[name] = rec
    (root / "fine_label_names.txt").write_text("\n".join(f"f{i}" for i in range(100)))
    m, _ = run(root, tmp_path / "dst")
    assert m.data["source"]["kind"] == "cifar100" and len(m.classes) == 100
    for split in ("train", "val"):
        for path, label, data in rows(m, split):
            name, i = path.split("#")
            assert label == recs[name][int(i), 1]
            assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))),
                                  recs[name][int(i), 2:].reshape(3, 32, 32).transpose(1, 2, 0))


@pytest.mark.parametrize("case,message", [
    ("missing", "src: no such directory"),
    ("empty", "is empty; expected SRC/train/<class>/"),
    ("unknown", "unknown layout (it holds a.txt, b.txt)"),
    ("empty class", "train/emu: class folder with no images (.jpg, .jpeg, .png, any case)"),
    ("loose images", "train holds images directly; expected one folder per class"),
    ("val class", "val/emu: class 'emu' has no folder in"),
    ("val fraction", "--val-fraction 0.2: SRC has its own val split"),
    ("cifar partial", "missing data_batch_5.bin (the CIFAR-10 binary version"),
    ("cifar truncated", "not a multiple of 3,073"),
])
def test_bad_sources_are_refused_naming_the_path(tmp_path, case, message):
    src, dst = tmp_path / "src", tmp_path / "dst"
    settings = {}
    if case == "empty":
        src.mkdir()
    elif case == "unknown":
        src.mkdir()
        (src / "a.txt").write_text("x"), (src / "b.txt").write_text("x")
    elif case == "empty class":
        (image_tree(src) / "train/emu").mkdir()
    elif case == "val class":
        (image_tree(src) / "val/emu").mkdir()
        Image.new("RGB", (4, 4)).save(src / "val/emu/x.png")
    elif case == "val fraction":
        image_tree(src)
        settings = {"val_fraction": 0.2}
    elif case == "loose images":
        (src / "train").mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(src / "train/x.jpg")
    elif case.startswith("cifar"):
        fake_cifar10(src)
        if case == "cifar partial":
            (src / "data_batch_5.bin").unlink()
        else:
            (src / "data_batch_2.bin").write_bytes(b"\0" * 5000)
    with pytest.raises(ValueError) as e:
        prepare(str(src), str(dst), Settings(**settings), log=lambda s: None, progress=False)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not dst.exists()  # refused before anything was written


def test_a_dst_that_is_not_this_prepare_is_refused(tmp_path):
    src = image_tree(tmp_path / "src")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not empty and holds no manifest.json"):
        run(src, foreign)
    run(src, tmp_path / "dst", seed=0)
    with pytest.raises(ValueError, match="holds a prepare with --seed 0; give the same SRC"):
        run(src, tmp_path / "dst", seed=1)
    other = image_tree(tmp_path / "other")
    with pytest.raises(ValueError, match=f"holds a prepare with SRC {src}"):
        run(other, tmp_path / "dst")
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    with pytest.raises(ValueError, match="is inside SRC .*: it would be read as part of the source"):
        run(src, src / "prepared")
    assert not (src / "prepared").exists()


def test_rerun_rewrites_only_the_missing_and_the_corrupt_file(tmp_path):
    src, dst = image_tree(tmp_path / "src"), tmp_path / "dst"
    first, _ = run(src, dst, row_group_size=4, file_size_mb=0.004)
    names = [f["name"] for s in first.splits for f in first.files(s)]
    assert len(names) >= 5
    mtimes = {n: (dst / n).stat().st_mtime_ns for n in names}
    (dst / names[1]).unlink()
    corrupt = dst / names[3]
    corrupt.write_bytes(b"\0" * corrupt.stat().st_size)  # same size, different sha256
    (dst / ".prepare-tmp-train-00009.parquet.123").write_bytes(b"half")  # a killed run's
    second, out = run(src, dst, row_group_size=4, file_size_mb=0.004, jobs=1)
    assert f"{len(names) - 2} already written and verified, 2 to write" in out
    for n in names:
        assert (dst / n).is_file()
        if n not in (names[1], names[3]):
            assert (dst / n).stat().st_mtime_ns == mtimes[n]  # untouched
    assert second.data == first.data  # same bytes, same sha256: the plan does not depend on jobs
    assert sorted(p.name for p in dst.iterdir()) == sorted(names + ["manifest.json"])


def test_an_unfinished_prepare_is_resumed_and_never_read(tmp_path):
    src, dst = image_tree(tmp_path / "src"), tmp_path / "dst"
    first, _ = run(src, dst, row_group_size=4, file_size_mb=0.004)
    data = json.loads((dst / "manifest.json").read_text())
    last = data["splits"]["train"]["files"].pop()  # as a run stopped before its last file
    data["complete"] = False
    (dst / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="its prepare did not finish; run the same `test`"):
        manifest.load(dst)
    mtime = (dst / last["name"]).stat().st_mtime_ns
    second, out = run(src, dst, row_group_size=4, file_size_mb=0.004)
    assert "1 to write with 1 process" in out and second.data == first.data
    assert (dst / last["name"]).stat().st_mtime_ns != mtime  # the unlisted file was redone


def test_manifest_load_names_the_file_that_is_wrong(tmp_path):
    src, dst = image_tree(tmp_path / "src"), tmp_path / "dst"
    m, _ = run(src, dst, row_group_size=4, file_size_mb=0.004)
    assert len(m.pieces("train")) == 10 and sum(p.rows for p in m.pieces("train")) == 36
    with pytest.raises(ValueError, match="no split 'test'; it has train, val"):
        m.pieces("test")
    name = m.files("val")[0]["name"]
    (dst / name).write_bytes(b"\0" * (dst / name).stat().st_size)
    manifest.load(dst)  # sizes only: still fine
    with pytest.raises(ValueError, match=f"{name}: sha256 differs"):
        manifest.load(dst, checksums=True)
    (dst / name).unlink()
    with pytest.raises(ValueError, match=f"{name}: missing; rerun"):
        manifest.load(dst)
    with pytest.raises(ValueError, match="not a prepared data folder"):
        manifest.load(src)


def test_main_prints_the_summary_and_refuses_bad_flags(tmp_path, capsys):
    src = image_tree(tmp_path / "src")
    assert main([str(src), str(tmp_path / "dst"), "--jobs", "2", "--seed", "4"]) == 0
    out = capsys.readouterr().out
    header, train, val = [line.split() for line in out.splitlines()[-4:-1]]
    assert header == ["split", "images", "classes", "files", "MiB", "skipped", "images/s"]
    assert train[:4] == ["train", "36", "3", "1"] and train[5] == "1"
    assert val[:4] == ["val", "6", "3", "1"] and val[5] == "0"
    m = manifest.load(tmp_path / "dst")
    assert m.data["command"] == f"ps-train data prepare {src} {tmp_path / 'dst'} --jobs 2 --seed 4"
    for flags, message in ((["--row-group-size", "0"], "--row-group-size 0: give 1 or more"),
                           (["--jobs", "0"], "--jobs 0: give 1 or more"),
                           (["--seed", "x"], "--seed: invalid int value: 'x'"),
                           (["--val-fraction", "1"], "--val-fraction 1.0: give a fraction in")):
        with pytest.raises(ValueError, match=message):
            main([str(src), str(tmp_path / "new"), *flags])

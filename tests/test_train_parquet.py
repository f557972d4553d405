"""Training on a prepared data set end to end: a JPEG tree made here (three classes told apart by
colour, plus a corrupt file), `ps-train data prepare`, then `ps-train --dataset parquet` on Ray
and in the simulator, through a local path and pyarrow's file:// URI. Every worker streams its own
partition; a replaced worker continues from its predecessor's position; bad input is one line."""

import json

import numpy as np
import pytest
from PIL import Image

from ps_trainer.cli import main

COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200)}
COMMON = ["--dataset", "parquet", "--model", "resnet20", "--image-size", "32", "--batch-size",
          "16", "--ps-shards", "1", "--eval-every", "30", "--no-progress", "--lr", "0.02"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """48 training and 12 held-out 48x40 JPEGs per class, noisy, and one truncated JPEG."""
    root = tmp_path_factory.mktemp("tree")
    rng = np.random.default_rng(0)
    for split, n in (("train", 48), ("val", 12)):
        for name, colour in COLOURS.items():
            folder = root / "src" / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                noise = rng.normal(0, 40, (40, 48, 3))
                pixels = np.clip(np.array(colour)[None, None] + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)
    good = (root / "src" / "train" / "red" / "0.jpg").read_bytes()
    (root / "src" / "train" / "red" / "bad.jpg").write_bytes(good[:len(good) // 2])
    assert main(["data", "prepare", str(root / "src"), str(root / "data"), "--row-group-size",
                 "16", "--jobs", "1"]) == 0
    m = json.loads((root / "data" / "manifest.json").read_text())
    assert m["splits"]["train"]["images"] == 144 and m["splits"]["val"]["images"] == 36
    assert [s["path"] for s in m["skipped"]] == ["train/red/bad.jpg"]
    return root / "data"


@pytest.mark.slow  # ~20 s: six epochs with ten-crop evaluation, in `make test-slow`
def test_a_simulated_run_on_a_file_uri_learns_the_colours(prepared, tmp_path):
    """Through pyarrow's file:// filesystem; the final evaluation of 10 crops per image."""
    run = tmp_path / "run"
    assert main([*COMMON, "--data-dir", f"file://{prepared}", "--workers", "2", "--epochs", "6",
                 "--simulate", "--eval-crops", "10", "--run-dir", str(run)]) == 0
    s = json.loads((run / "summary.json").read_text())
    assert s["accounted"] and s["steps"] == 2 * 27  # ceil(6 x 144 / (16 x 2)) steps each
    assert s["polyak"]["top1"] > 0.9, s  # chance is 1/3


@pytest.mark.slow  # a fault drill (13 s): the default run passed 10 min on a slower VM
def test_a_ray_run_streams_and_a_replaced_worker_continues(prepared, ray_local, tmp_path):
    run = tmp_path / "run"
    assert main([*COMMON, "--data-dir", str(prepared), "--workers", "2", "--epochs", "6",
                 "--crash-worker-at", "1@5", "--run-dir", str(run)]) == 0
    s = json.loads((run / "summary.json").read_text())
    assert s["accounted"] and len(s["worker_restarts"]) == 1
    assert s["polyak"]["top1"] > 0.9, s


@pytest.mark.slow
def test_workers_decode_in_loader_processes_inside_their_actors(prepared, ray_local, tmp_path):
    """--loader-workers 1: each worker actor decodes in a DataLoader process it spawned; one
    worker is killed mid-run and its replacement spawns its own."""
    run = tmp_path / "run"
    assert main([*COMMON, "--data-dir", str(prepared), "--workers", "2", "--epochs", "6",
                 "--loader-workers", "1", "--crash-worker-at", "0@4", "--run-dir", str(run)]) == 0
    s = json.loads((run / "summary.json").read_text())
    assert s["accounted"] and len(s["worker_restarts"]) == 1
    assert s["polyak"]["top1"] > 0.9, s


def test_a_worker_actor_starts_its_stream_at_its_recorded_pushes(prepared, ray_local):
    """make_worker gives a replacement (clock = pushes every shard recorded) the batch those
    pushes reached: clock x push_every."""
    from ps_trainer.config import TrainConfig
    from ps_trainer.trainer.actors import make_worker
    from ps_trainer.trainer.cluster import plan_resources
    from ps_trainer.trainer.plan import prepare

    ray = ray_local
    cfg = TrainConfig.from_dict({"dataset": "parquet", "data_dir": str(prepared), "model":
                                 "resnet20", "image_size": 32, "workers": 2, "push_every": 3,
                                 "batch_size": 4}).validate()
    plan = prepare(cfg)
    resources = plan_resources(2, 1, "cpu", {"CPU": 2, "GPU": 0})
    actor = make_worker(plan, [], resources, 1, crash=False, clock=7)
    try:
        stream = ray.get(actor.__ray_call__.remote(lambda self: self.worker.batches.stream))
        assert (stream.worker, stream.workers, stream.start) == (1, 2, 21)
        assert ray.get(actor.__ray_call__.remote(lambda self: self.worker.batches.position)) == 21
    finally:
        ray.kill(actor)


@pytest.mark.parametrize("flags,message", [
    (["--dataset", "parquet"], "--dataset parquet needs --data-dir DIR"),
    (["--dataset", "parquet", "--data-dir", "/nonexistent"], "/nonexistent: no such directory"),
    (["--eval-crops", "12"], "--eval-crops 12 is out of range: expected 1, 10 or 144"),
    (["--augment", "mixup"], "--augment"),
])
def test_bad_data_flags_are_one_line_and_exit_2(flags, message, capsys):
    assert main(["--model", "resnet20", "--dry-run", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_a_one_channel_model_or_no_held_out_split_is_refused(prepared, tmp_path, capsys):
    assert main(["--dataset", "parquet", "--data-dir", str(prepared), "--model", "digits_cnn",
                 "--dry-run"]) == 2
    assert "3-channel images, but --model digits_cnn takes 1" in capsys.readouterr().err
    src = tmp_path / "flat"
    for name, colour in COLOURS.items():
        (src / name).mkdir(parents=True)
        Image.new("RGB", (8, 8), colour).save(src / name / "a.png")
    assert main(["data", "prepare", str(src), str(tmp_path / "d"), "--val-fraction", "0"]) == 0
    capsys.readouterr()
    assert main(["--dataset", "parquet", "--data-dir", str(tmp_path / "d"), "--model", "resnet20",
                 "--dry-run"]) == 2
    assert "no held-out (val) images" in capsys.readouterr().err

"""`ps-train` typed on a laptop starts a Ray node that listens on 127.0.0.1 only."""

import os
import subprocess
import sys
import time

import psutil


def in_session(sid: int) -> list[int]:
    """The processes of session `sid` still alive (a run started with start_new_session=True:
    its Ray processes inherit the session)."""
    alive = []
    for pid in psutil.pids():
        try:
            if os.getsid(pid) == sid and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except (OSError, psutil.Error):
            pass
    return alive


def test_ps_train_binds_ray_to_loopback_only(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    proc = subprocess.Popen([sys.executable, "-m", "ps_trainer.cli", "--epochs", "200",
                             "--run-dir", str(tmp_path / "run"), "--no-progress"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        listening = []
        deadline = time.time() + 90
        while time.time() < deadline:
            out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
            listening = [l for l in out.splitlines() if "gcs_server" in l or "raylet" in l]
            if any("gcs_server" in l for l in listening):
                break
            time.sleep(0.5)
        assert listening, "no Ray services seen"
        local = [l.split()[3] for l in listening]
        assert all("127.0.0.1" in a for a in local), local
    finally:
        proc.send_signal(2)  # Ctrl-C while Ray is still starting
        proc.communicate(timeout=120)
        # The run's Ray processes outlive its driver by a second or two (the reaper kills what
        # is left half a second after the driver is gone). Wait for them: the next test starts
        # a Ray node of its own, and in one CI run that node's raylet never came up, started 2 s
        # after a run interrupted here, while that run was still going down.
        deadline = time.time() + 30
        while in_session(proc.pid) and time.time() < deadline:
            time.sleep(0.2)
    assert in_session(proc.pid) == [], "processes of the interrupted run are still alive"

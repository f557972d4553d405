"""`ps-train` typed on a laptop starts a Ray node that listens on 127.0.0.1 only."""

import os
import subprocess
import sys
import time


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
        proc.send_signal(2)
        proc.communicate(timeout=120)

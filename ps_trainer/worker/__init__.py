"""The worker: pull -> forward/backward -> push against any PS client (`worker.py`), and the Ray
actor that runs it (`ray_worker.py`)."""

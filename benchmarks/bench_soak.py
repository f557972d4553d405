"""Soak benchmark: 32 zero-compute workers hammer 4 shards for 60 s (loopback Ray).

    python benchmarks/bench_soak.py [seconds]

Writes the accounting (pushes sent, every outcome, their sum: checked to add up before anything
is written), throughput, push latency p50/p99 and memory over time to docs/benchmarks.md.
"""

import os
import sys

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from common import machine, write_section  # noqa: E402

from ps_trainer.harness.soak import run_soak  # noqa: E402
from ps_trainer.trainer.cluster import start_ray  # noqa: E402


def accounting(r: dict) -> list[str]:
    """The accounting table, every figure from the soak's result: each outcome's count (all of
    policy.OUTCOMES, zeros included) and their sum, which must equal the pushes sent."""
    o = r["outcomes"]
    if not r["accounted"] or sum(o.values()) != r["sent"]:  # never publish a table that does not add up
        raise SystemExit(f"bench_soak: the outcomes {o} add up to {sum(o.values())}, not to the "
                         f"{r['sent']} pushes sent (recorded {r['recorded']}, per worker equal "
                         f"{r['per_worker_equal']}); nothing written")
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(r["reject_reasons"].items())) or "none"
    return ["| pushes sent | recorded | " + " | ".join(o) + " | sum of outcomes | "
            "per worker equal |",
            "| ---: | ---: | " + "---: | " * len(o) + "---: | --- |",
            f"| {r['sent']} | {r['recorded']} | " + " | ".join(str(v) for v in o.values())
            + f" | {sum(o.values())} | {r['per_worker_equal']} |",
            "",
            f"Sent = recorded = the sum of the outcomes = {r['sent']} (checked by the benchmark "
            f"before it writes). Rejected, by reason: {reasons}."]


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 60.0
    start_ray(None, num_cpus=os.cpu_count())
    r = run_soak(workers=32, shards=4, seconds=seconds, params=1_000_000)
    s = r["samples"]
    mib = lambda b: f"{b / 2**20:.0f}"  # noqa: E731
    lines = [f"Machine: {machine()}. 32 zero-compute workers (threads in 4 actor processes), "
             f"4 shards, 1M parameters (1 MiB of float32 per shard push), max 2 pushes in flight "
             f"per worker, every 20th push NaN (rejected). {r['seconds']:.0f} s including start.",
             "",
             *accounting(r),
             "",
             "| pushes/s | p50 latency | p99 latency |",
             "| ---: | ---: | ---: |",
             f"| {r['pushes_per_s']:.0f} | {r['latency_ms_p50']:.0f} ms | "
             f"{r['latency_ms_p99']:.0f} ms |",
             "",
             "Memory over the run (object store MiB / the 4 shards' private resident MiB, RssAnon): "
             + ", ".join(f"{t:.0f}s {mib(b)}/{mib(m)}" for t, b, m in s[::max(1, len(s) // 12)])]
    print("\n".join(lines))
    write_section("Soak: 32 workers against 4 shards", "\n".join(lines))


if __name__ == "__main__":
    main()

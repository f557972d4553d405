"""The soak test (bounded in time, loopback only): 32 zero-compute workers hammer 4 shards."""


from ps_trainer.harness.soak import run_soak


def test_32_workers_hammering_4_shards_lose_nothing_and_memory_stays_flat(ray_local):
    r = run_soak(workers=32, shards=4, seconds=8, params=100_000)
    # nothing lost, nothing counted twice: per worker, pushes sent = pushes the shards recorded
    assert r["per_worker_equal"] and r["sent"] == r["recorded"] > 32 * 4 * 10
    assert sum(r["outcomes"].values()) == r["sent"]
    # every 20th step of every worker carried a NaN: rejected on all 4 shards, and only those
    assert r["outcomes"]["rejected"] == sum(4 * (n // 4 // 20) for n in r["sent_per_worker"].values())
    assert r["outcomes"]["applied"] == r["sent"] - r["outcomes"]["rejected"]
    # back-pressure bounds what is in flight: the object store stays small, the shards' memory flat
    store = [b for _, b, _ in r["samples"]]
    assert max(store) < 64 * 2**20, store
    rss = [m for _, _, m in r["samples"]]
    half = rss[len(rss) // 2:]
    assert max(half) < 1.2 * min(half), rss
    assert 0 < r["latency_ms_p50"] <= r["latency_ms_p99"]
    print(f"soak: {r['pushes_per_s']:.0f} pushes/s, p50 {r['latency_ms_p50']:.0f} ms, "
          f"p99 {r['latency_ms_p99']:.0f} ms")

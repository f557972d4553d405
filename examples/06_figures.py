"""Every figure of docs/ideas.md, made by the project's own code, never drawn by hand.

Two sources: the deterministic simulator (`harness/simulate.py`: logical workers on a virtual
clock, pulling from and pushing to the real `ShardState`s, the same `Worker` loop as on Ray), and
the core classes driven by hand in one process (`ShardState`, `NesterovMomentum`,
`PolyakAverage`) on small quadratics, where the optimum is known.

    python examples/06_figures.py                          # docs/figures/*.png, ~1-2 min on 2 cores
    python examples/06_figures.py --fast --out /tmp/figs   # tiny runs (< 60 s): what the test runs

Every number docs/ideas.md quotes is printed here, one line each: `[figure] what: value`.
The simulated runs use the staleness sweep's settings (examples/03_staleness_sweep.yaml):
digits_cnn_small (3.8K parameters, BatchNorm) on scikit-learn's 8x8 digits, batch 32, lr 0.05,
Nesterov momentum 0.9, 2 shards, seed 0.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ps_trainer.config import TrainConfig
from ps_trainer.core import LRSchedule, NesterovMomentum, PolyakAverage, ShardState
from ps_trainer.harness.plots import STYLE  # the reports' style; selects the Agg backend
from ps_trainer.harness.simulate import Simulation
from ps_trainer.trainer.evaluate import evaluate
from ps_trainer.trainer.metrics import read_table
from ps_trainer.transport import InProcessClient

import matplotlib.pyplot as plt  # noqa: E402  (after plots.py chose the backend)

ROOT = Path(__file__).resolve().parent.parent
DPI = 100
MS = 1e3  # virtual seconds -> ms on time axes
FAST = False  # set by --fast: tiny runs, for the test
BASE = dict(simulate=True, model="digits_cnn_small", batch_size=32, lr=0.05, momentum=0.9,
            ps_shards=2, progress=False, seed=0)


def say(fig: str, text: str) -> None:
    print(f"[{fig}] {text}", flush=True)


def save(fig, out: Path, name: str) -> None:
    fig.tight_layout()
    fig.savefig(out / name, dpi=DPI)
    plt.close(fig)


# ---- running the simulator ---------------------------------------------------------------------
RUNS: dict = {}


def simulate(**settings) -> dict:
    """One simulated run of BASE + settings (cached: figures share runs). Returns its push rows
    and evaluation rows as numpy columns, its summary, and `served_bn`: (step, top-1) of the Polyak
    weights evaluated with the BatchNorm statistics the shards served, not recomputed ones."""
    settings = {"epochs": 2 if FAST else 15, "sim_evals": 5 if FAST else 20, **settings}
    key = tuple(sorted(settings.items()))
    if key not in RUNS:
        with tempfile.TemporaryDirectory() as d:
            cfg = TrainConfig(**{**BASE, **settings, "run_dir": d}).validate()
            sim = Simulation(cfg, run_dir=d, log=lambda *a: None)
            served: list = []
            sim.evaluator = with_served_bn(sim, served)
            summary = sim()
            table = lambda name: {k: np.asarray(v)  # noqa: E731
                                  for k, v in read_table(Path(d) / name).to_pydict().items()}
            RUNS[key] = dict(pushes=table("pushes.parquet"), evals=table("evals.parquet"),
                             summary=summary, served_bn=np.array(served))
    return RUNS[key]


def with_served_bn(sim: Simulation, served: list):
    """The run's `Evaluator` (raw weights with the pushed BatchNorm statistics, Polyak weights with
    recomputed ones), plus one more score per evaluation: the Polyak weights with the statistics
    the shards serve, i.e. the workers' pushed ones, which belong to the raw weights (figure h)."""
    evaluator, plan = sim.evaluator, sim.plan
    model = copy.deepcopy(plan.model)  # a copy, not a new build: the run's RNG is left alone
    client = InProcessClient(sim.shards)

    def evaluate_both(step: int, t0: float, final: bool = False) -> list[dict]:
        rows = evaluator(step, t0, final)
        snaps = client.pull(averaged=True)  # [Polyak weights | served BatchNorm statistics]
        plan.layout.load_into(
            model, np.concatenate([a[:s.num_params] for (a, _), s in zip(snaps, sim.specs)]),
            np.concatenate([a[s.num_params:] for (a, _), s in zip(snaps, sim.specs)]))
        m = evaluate(model, plan.data.x_test, plan.data.y_test, in_channels=plan.in_channels,
                     image_size=plan.image_size)
        served.append((step, m["top1"]))
        return rows

    return evaluate_both


def curve(run: dict, weights: str) -> tuple[np.ndarray, np.ndarray]:
    """(worker steps, held-out top-1 in %) of the raw or Polyak weights."""
    e = run["evals"]
    keep = e["weights"] == weights
    return e["step"][keep], 100 * e["top1"][keep]


def final(run: dict, weights: str) -> float:
    return curve(run, weights)[1][-1]  # after the last step


def accuracy(ax, runs: dict, fig: str, title: str) -> None:
    """Held-out top-1 against worker steps, raw weights solid and Polyak dashed; finals printed."""
    for name, run in runs.items():
        for weights, ls in (("raw", "-"), ("polyak", "--")):
            ax.plot(*curve(run, weights), ls, marker=".", label=f"{name}, {weights}")
            say(fig, f"{name}: final {weights} top-1 {final(run, weights):.2f}%")
    ax.set(xlabel="worker steps (all workers)", ylabel="held-out top-1 (%)", ylim=(0, 100),
           title=title)
    ax.legend(fontsize=8)


def one_shard(run: dict) -> dict:
    """Shard 0's push rows (every push goes to every shard; one row per worker step)."""
    p = run["pushes"]
    return {k: v[p["shard"] == 0] for k, v in p.items()}


# ---- a. Downpour SGD: a timeline of pulls, computes and pushes ---------------------------------
def fig_a(out: Path) -> None:
    run = simulate(workers=4, ps_shards=1, stragglers=1, straggler_slowdown=2.0, sim_jitter=0.2,
                   epochs=1, sim_evals=1)
    p = one_shard(run)
    end = p["time"]  # s: the push arrives and is applied when the step ends
    start = end - p["compute"] - p["delay"]  # s: the pull, when the step began
    arrival = p["version"] - 1  # the shard's version when the push arrived (it then applied it)
    horizon = 0.062  # s of virtual time shown
    fig, (top, gantt) = plt.subplots(2, 1, sharex=True, figsize=(10, 6.4),
                                     gridspec_kw=dict(height_ratios=[1, 1.3]))
    order = np.argsort(end)
    top.step(np.r_[0, end[order]] * MS, np.r_[0, p["version"][order]], where="post", color="k",
             label="shard version (updates applied)")
    colors = plt.get_cmap("tab10").colors
    for i in np.flatnonzero(start < horizon):
        w = p["worker"][i]
        steps = ((start[i], p["compute"][i], dict(alpha=0.8)),  # computing, then a straggler's
                 (end[i] - p["delay"][i], p["delay"][i], dict(alpha=0.35, hatch="//")))  # extra
        for left, width, look in steps:
            if width > 0:  # bars 0.15 ms apart, so that consecutive steps show
                gantt.barh(w, width * MS - 0.15, left=left * MS + 0.15, height=0.55,
                           color=colors[w], edgecolor="k", lw=0.5, **look)
        gantt.text(start[i] * MS + 0.3, w, f"v{p['version_read'][i]}", va="center", fontsize=8)
        if end[i] < horizon:
            gantt.annotate(f"τ={p['staleness'][i]}", (end[i] * MS, w + 0.3), ha="center",
                           fontsize=8, color="darkred")
    # Two pushes explained on the version curve: read at the pull, measured at the arrival.
    shown = np.flatnonzero((end < horizon) & (p["step"] >= 2))
    for i in (shown[np.argmax(p["staleness"][shown])], shown[p["worker"][shown] == 0][0]):
        t0, t1, vr, va = start[i] * MS, end[i] * MS, p["version_read"][i], arrival[i]
        top.plot([t0, t1], [vr, vr], ls="--", color=colors[p["worker"][i]])
        top.plot(t0, vr, "o", color=colors[p["worker"][i]])
        top.annotate("", (t1, va), (t1, vr), arrowprops=dict(arrowstyle="->", color="darkred"))
        top.text(t1 + 0.4, (vr + va) / 2, f"worker {p['worker'][i]}: τ = {va} − {vr} = "
                 f"{p['staleness'][i]}", color="darkred", fontsize=9, va="center")
        say("a", f"worker {p['worker'][i]} read v{vr} at {t0:.1f} ms, its push arrived at "
                 f"{t1:.1f} ms when the shard was at v{va}: staleness {p['staleness'][i]}")
    top.set_ylabel("version")
    top.set_ylim(0, arrival[end < horizon].max() + 3)
    top.set_title("Downpour SGD: 4 workers, one shard; worker 3 is a 2x straggler\n"
                  "staleness τ = shard version when the push arrives − version it was computed on")
    gantt.set_yticks(range(4), [f"worker {w}" + " (straggler)" * (w == 3) for w in range(4)])
    gantt.set(ylim=(3.7, -0.6), xlim=(0, horizon * MS),
              xlabel="virtual time (ms; one step computes for 10 ms ± 20%)")
    top.bar(0, 0, color="0.6", label="a worker's step: pull (v = version read), compute, "
                                     "push (τ = its staleness)")
    top.bar(0, 0, color="0.85", hatch="//", label="the straggler's extra time")
    top.legend(loc="upper left", fontsize=8)
    save(fig, out, "a_downpour_timeline.png")
    for w in range(4):
        say("a", f"mean staleness of worker {w}: {p['staleness'][p['worker'] == w].mean():.2f}")


# ---- b. staleness against the number of workers ------------------------------------------------
def fig_b(out: Path) -> None:
    ks = (1, 2, 4, 8) if FAST else (1, 2, 4, 8, 16)
    fig, (hist, means) = plt.subplots(1, 2, figsize=(11, 4.2))
    stats = []
    for k in ks:
        s = simulate(workers=k)["pushes"]["staleness"]
        hist.hist(s, bins=np.arange(-0.5, s.max() + 1.5), density=True, histtype="step", lw=1.8,
                  label=f"K = {k}")
        stats.append((s.mean(), *np.percentile(s, [5, 95]), s.max()))
        say("b", f"mean staleness, K={k}: {s.mean():.2f} (5-95%: {stats[-1][1]:.0f}-"
                 f"{stats[-1][2]:.0f}, max {s.max()})")
    m, lo, hi, most = np.array(stats).T
    hist.set(xlabel="staleness τ (versions)", ylabel="fraction of pushes", yscale="log",
             title="Staleness of every push, K equally fast workers")
    hist.legend()
    x = np.arange(len(ks))  # K doubles at each tick
    means.fill_between(x, lo, hi, alpha=0.25, label="5th-95th percentile")
    means.plot(x, m, "o-", label="measured mean")
    means.plot(x, most, "v:", color="0.4", label="measured max")
    means.plot(x, np.array(ks) - 1, "k--", lw=1, label="K − 1")
    means.set(xticks=x, xticklabels=[str(k) for k in ks], xlabel="workers K",
              ylabel="staleness τ (versions)", title="Mean staleness ≈ K − 1")
    means.legend()
    save(fig, out, "b_staleness_vs_workers.png")


# ---- c. Nesterov momentum on the server, with and without staleness ------------------------------
H = np.logspace(-2, 0, 20)  # curvatures of f(w) = 1/2 sum_i h_i w_i^2: condition number 100


def quadratic(momentum: float, nesterov: bool, workers: int, updates: int = 300,
              lr: float = 0.1) -> tuple[np.ndarray, list[int]]:
    """Gradient descent on f through one real `ShardState`, by `workers` workers taking turns:
    each pushes the gradient of the weights it pulled one round earlier, so every push is
    `workers - 1` versions stale, as the shard measures. Returns f after each update."""
    shard = ShardState(0, np.ones(len(H), np.float32), schedule=LRSchedule(lr),
                       optimizer=NesterovMomentum(momentum, 0.0, nesterov))
    held, losses, staleness = {}, [], []
    for t in range(updates + workers):
        k = t % workers
        if k in held:
            r = shard.push(*held[k], worker=k)  # a non-finite gradient is rejected, counted
            staleness.append(r.staleness)
            with np.errstate(over="ignore", invalid="ignore"):
                losses.append(0.5 * np.sum(H * shard.params.astype(np.float64) ** 2))
        w, _, version = shard.pull()
        with np.errstate(over="ignore", invalid="ignore"):
            held[k] = ((H * w).astype(np.float32), version)  # the exact gradient at w
    return np.array(losses), staleness


def fig_c(out: Path) -> None:
    rules = [("SGD (no momentum)", 0.0, False), ("heavy-ball momentum 0.9", 0.9, False),
             ("Nesterov momentum 0.9", 0.9, True), ("Nesterov momentum 0.6", 0.6, True)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.3), sharey=True)
    for ax, workers in zip(axes, (1, 4)):
        for name, m, nesterov in rules:
            f, staleness = quadratic(m, nesterov, workers)
            ax.plot(np.arange(1, len(f) + 1), np.clip(np.nan_to_num(f, nan=np.inf), 1e-6, 1e6),
                    label=name, ls="--" if not nesterov and m else "-")
            say("c", f"{workers} worker(s), staleness {max(staleness)}, {name}: "
                     f"f = {f[-1]:.2g} after {len(f)} updates")
        ax.set(yscale="log", ylim=(1e-6, 1e6), xlabel="updates applied by the shard (versions)",
               title="1 worker: no staleness" if workers == 1 else
               f"{workers} workers taking turns: every push {workers - 1} versions stale")
        ax.legend(fontsize=8, loc="lower left")
    axes[0].set_ylabel("f(w) − f(w*)  (clipped at 1e6: diverged)")
    fig.suptitle("Nesterov momentum on the server: a 20-d quadratic, condition number 100, lr 0.1")
    save(fig, out, "c_nesterov_momentum.png")


# ---- d. Polyak averaging -----------------------------------------------------------------------
def fig_d(out: Path) -> None:
    h, updates = np.array([1.0, 0.2]), 600
    fig, (traj, acc) = plt.subplots(1, 2, figsize=(11, 4.5))
    gx, gy = np.meshgrid(np.linspace(-2.5, 3.5, 80), np.linspace(-3, 3, 80))
    traj.contour(gx, gy, 0.5 * (h[0] * gx ** 2 + h[1] * gy ** 2), levels=8, colors="0.8")
    for label, averager, color in (("running mean from update 100", PolyakAverage(None, 100), "C1"),
                                   ("exponential, decay 0.99", PolyakAverage(0.99), "C2")):
        shard = ShardState(0, np.array([3.0, 2.0], np.float32), schedule=LRSchedule(0.1),
                           optimizer=NesterovMomentum(0.5), averager=averager)
        noise = np.random.default_rng(0)  # the same noisy gradients for both averages
        raw, avg = [], []
        for _ in range(updates):
            w, _, version = shard.pull()
            g = h * w + noise.standard_normal(2)  # (2,) a stochastic gradient: unit noise
            shard.push(g.astype(np.float32), version)
            raw.append(shard.params.copy())
            avg.append(shard.average.copy())
        raw, avg = np.array(raw), np.array(avg)
        if color == "C1":  # the raw path is the same in both runs: drawn once
            traj.plot(*raw.T, color="C0", lw=0.5, alpha=0.6, label="raw weights (every update)")
            say("d", f"2-d quadratic: raw weights' mean distance to the optimum over the last "
                     f"100 updates: {np.linalg.norm(raw[-100:], axis=1).mean():.2f}")
        shown = avg[averager.start:]  # before its start the average is the raw weights
        on_top = 3 if averager.decay is None else 2  # the running mean: the shorter path
        traj.plot(*shown.T, color=color, lw=2, label=f"Polyak: {label}", zorder=on_top)
        traj.plot(*shown[-1], "o", color=color, mec="k", ms=8, zorder=4)  # where it ends
        say("d", f"2-d quadratic: Polyak ({label}) mean distance over the last 100 updates: "
                 f"{np.linalg.norm(avg[-100:], axis=1).mean():.2f}")
    traj.plot(0, 0, "k*", ms=12, label="optimum", zorder=5)
    traj.set(xlabel="w₁ (curvature 1)", ylabel="w₂ (curvature 0.2)", aspect="equal",
             title=f"Noisy gradients, {updates} updates (lr 0.1, Nesterov 0.5)")
    traj.legend(fontsize=8, loc="lower left")
    run = simulate(workers=8)
    accuracy(acc, {"8 async workers": run}, "d", "Simulator: digits, Polyak decay 0.99")
    for weights in ("raw", "polyak"):
        steps, top1 = curve(run, weights)
        reach = steps[top1 >= 90]
        say("d", f"{weights} top-1 first >= 90% at step {reach[0] if reach.size else 'never'}")
    save(fig, out, "d_polyak_averaging.png")


# ---- e. bounded staleness (SSP) and synchronous training with backup workers -------------------
POLICIES = [("async", {}), ("SSP, s = 2", dict(policy="bounded", ssp_bound=2)),
            ("BSP", dict(policy="sync")), ("BSP, 1 backup", dict(policy="sync", backup_workers=1))]


def ssp_lead(p: dict, steps_each: int) -> int:
    """The most pushes any worker was ahead of the slowest unfinished one when it pulled: what SSP
    bounds by s (Ho et al.'s clock gap), reconstructed from shard 0's rows."""
    pushed = {w: np.sort(p["time"][p["worker"] == w]) for w in np.unique(p["worker"])}
    lead = 0
    for i in range(len(p["time"])):
        t = p["time"][i] - p["compute"][i] - p["delay"][i] + 1e-9  # the pull (+ rounding)
        clocks = {w: np.searchsorted(ts, t, side="right") for w, ts in pushed.items()}
        active = [c for c in clocks.values() if c < steps_each]  # finished workers are let go
        lead = max(lead, p["step"][i] - 1 - min(active, default=p["step"][i] - 1))
    return int(lead)


def fig_e(out: Path) -> None:
    k, epochs = 4, 2 if FAST else 6
    runs = {name: simulate(workers=k, stragglers=1, straggler_slowdown=4.0, epochs=epochs,
                           sim_evals=2, **opts) for name, opts in POLICIES}
    fig, (clock, hist, wait) = plt.subplots(1, 3, figsize=(15, 4.3))
    for name, w, ls, color in (("async", 0, "--", "C0"), ("SSP, s = 2", 0, "-", "C0"),
                               ("SSP, s = 2", 3, "-", "C3")):
        p = one_shard(runs[name])
        t = np.sort(p["time"][p["worker"] == w])
        clock.step(np.r_[0, t] * MS, np.arange(len(t) + 1), where="post", ls=ls, color=color,
                   label=f"{name}, worker {w}" if w == 0 else
                   "worker 3, the 4x straggler (async and SSP alike)")
    clock.set(xlabel="virtual time (ms)", ylabel="pushes made (the worker's clock)",
              title="SSP keeps fast workers within s of the slowest")
    clock.legend(fontsize=8)
    width = 0.2  # of a bar: four policies side by side
    most = max(one_shard(r)["staleness"].max() for r in runs.values())
    for j, (name, _) in enumerate(POLICIES):
        p = one_shard(runs[name])
        s = p["staleness"]
        hist.bar(np.arange(most + 1) + (j - 1.5) * width, np.bincount(s, minlength=most + 1),
                 width, label=name)
        waits = [p["wait"][p["worker"] == w].sum() * MS for w in range(k)]
        wait.bar(np.arange(k) + (j - 1.5) * width, waits, width, label=name)
        run = runs[name]["summary"]
        say("e", f"{name}: staleness mean {s.mean():.2f}, max {s.max()}; wait per worker (ms) "
                 + ", ".join(f"{x:.0f}" for x in waits) + f"; versions {run['versions'][0]}; "
                 f"rejected {(p['outcome'] == 'rejected').sum()}; virtual time "
                 f"{run['virtual_seconds'] * MS:.0f} ms; raw top-1 {100 * run['raw']['top1']:.2f}%")
    steps_each = int(one_shard(runs["async"])["step"].max())
    for name in ("SSP, s = 2", "async"):
        say("e", f"{name}: largest clock lead at a pull: "
                 f"{ssp_lead(one_shard(runs[name]), steps_each)} (SSP's bound s = 2)")
    say("e", f"SSP's staleness bound in versions, (K - 1)(2s + 1) = {(k - 1) * 5}")
    hist.set(xlabel="staleness τ (versions)", ylabel="pushes", yscale="log",
             title=f"{k} workers, one a 4x straggler")
    hist.legend(fontsize=8)
    wait.set_xticks(range(k), [f"worker {w}" + ("\n(straggler)" if w == k - 1 else "")
                               for w in range(k)])
    wait.set(ylabel="time waiting to pull (virtual ms)", title="Who waits for whom")
    wait.legend(fontsize=8)
    save(fig, out, "e_ssp_and_backup_workers.png")


# ---- f. staleness-aware learning rate ----------------------------------------------------------
def fig_f(out: Path) -> None:
    k = 16
    runs = {"async": simulate(workers=k),
            "staleness_lr": simulate(workers=k, policy="staleness_lr")}
    fig, (lr, acc) = plt.subplots(1, 2, figsize=(11, 4.3))
    for (name, run), marker in zip(runs.items(), ("s", "o")):
        p = one_shard(run)
        pairs = np.unique(np.c_[p["staleness"], p["lr"]], axis=0)
        lr.plot(pairs[:, 0], pairs[:, 1], marker, ls="none", ms=5, label=f"{name}: pushes applied")
        say("f", f"{k} workers, {name}: mean staleness {p['staleness'].mean():.2f}, "
                 f"mean lr applied {p['lr'].mean():.4f}")
    tau = np.arange(0, pairs[:, 0].max() + 1)
    lr.plot(tau, 0.05 / np.maximum(1, tau), "k-", lw=0.8, label="0.05 / max(1, τ)")
    lr.set(yscale="log", xlabel="staleness τ of the push (versions)",
           ylabel="learning rate applied", title="lr / τ: a stale gradient moves the weights less")
    lr.legend(fontsize=8)
    accuracy(acc, runs, "f", f"Simulator: digits, {k} workers, momentum 0.9")
    save(fig, out, "f_staleness_aware_lr.png")


# ---- g. delay compensation (DC-ASGD) -----------------------------------------------------------
def fig_g(out: Path) -> None:
    k = 16
    runs = {"async": simulate(workers=k), "dc_asgd": simulate(workers=k, policy="dc_asgd")}
    fig, (loss, acc) = plt.subplots(1, 2, figsize=(11, 4.3))
    for name, run in runs.items():
        p = one_shard(run)
        order = np.argsort(p["time"], kind="stable")
        window = 25  # steps in the moving average
        smooth = np.convolve(p["loss"][order], np.ones(window) / window, mode="valid")
        loss.plot(np.arange(window, len(order) + 1), smooth, label=name)
        say("g", f"{k} workers, {name}: training loss (last {window} steps) {smooth[-1]:.3f}; "
                 f"outcomes {dict(run['summary']['outcomes'])}")
    loss.set(xlabel="worker steps (all workers)", ylabel=f"training loss ({window}-step mean)",
             yscale="log", title=f"{k} workers: mean staleness ≈ {k - 1}")
    loss.legend()
    accuracy(acc, runs, "g", "DC-ASGD-a: g + λ g⊙g⊙(w_now − w_read), λ = 2")
    save(fig, out, "g_delay_compensation.png")


# ---- h. BatchNorm statistics for averaged weights ----------------------------------------------
def fig_h(out: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.3), sharey=True)
    for ax, (label, decay) in zip(axes, (("exponential, decay 0.99", "0.99"),
                                         ("running mean of every update", "mean"))):
        run = simulate(workers=8, polyak_decay=decay)
        served = run["served_bn"]
        ax.plot(*curve(run, "raw"), "-", marker=".", color="C0", label="raw weights, pushed stats")
        ax.plot(served[:, 0], 100 * served[:, 1], "-", marker="x", color="C3",
                label="Polyak weights, the raw weights' stats")
        ax.plot(*curve(run, "polyak"), "-", marker=".", color="C1",
                label="Polyak weights, recomputed stats")
        gap = curve(run, "polyak")[1] - 100 * served[:, 1]
        say("h", f"Polyak {label}: final top-1 {final(run, 'polyak'):.2f}% with recomputed "
                 f"statistics, {100 * served[-1, 1]:.2f}% with the raw weights'; largest gap "
                 f"{gap.max():.1f} points at step {int(served[np.argmax(gap), 0])}")
        ax.set(xlabel="worker steps (all workers)", ylim=(0, 100), title=f"Polyak: {label}")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("held-out top-1 (%)")
    fig.suptitle("BatchNorm statistics for averaged weights (simulator: digits, 8 async workers)")
    save(fig, out, "h_batchnorm_for_averaged_weights.png")


FIGURES = {"a": fig_a, "b": fig_b, "c": fig_c, "d": fig_d, "e": fig_e, "f": fig_f, "g": fig_g,
           "h": fig_h}


def main() -> None:
    global FAST
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="tiny runs (< 60 s), for the test")
    parser.add_argument("--out", default=str(ROOT / "docs" / "figures"),
                        help="folder for the PNGs (default: docs/figures)")
    args = parser.parse_args()
    FAST = args.fast
    torch.set_num_threads(1)
    plt.rcParams.update(STYLE)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    for letter, make in FIGURES.items():
        t = time.time()
        make(out)
        say(letter, f"done in {time.time() - t:.1f} s")
    print(f"all figures in {out} ({'fast' if FAST else 'full'} mode) in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()

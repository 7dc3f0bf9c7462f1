"""Shared pieces of the report sections: the run context, machine metadata, a parallel training runner.

Every section module defines ``TITLE``, ``ORDER``, ``run(ctx) -> dict`` and ``render(res) -> str``
(see /benchmarks/run_all.py). Sections train through the real CLI in subprocesses (``python -m mrdib_cli
train``) so what the report measures is exactly what a user runs, and parallel runs cannot share state.
"""

from __future__ import annotations

import heapq
import itertools
import json
import os
import platform
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
METRICS = ["recall@10", "recall@20", "ndcg@10", "ndcg@20"]
#: the ``--node-budget`` the sampled-mode sections measure (sampled_baby's quality, scaling's epochs): at
#: fan-out 10 it binds on Baby itself (a step's first hop would add about 13,000 nodes), so the quality table
#: tests it where it already changes the step
NODE_BUDGET = 8192


class SkipSection(Exception):
    """The section cannot run here (data missing, ...): the report says why instead of faking numbers."""


@dataclass
class Context:
    mode: str  # "quick" | "full"
    device: str  # "cpu" | "cuda"
    jobs: int
    threads: int
    seeds: list[int]
    workdir: Path
    out_dir: Path
    shared: Path | None
    log: Callable[[str], None] = field(default=lambda s: print(s, file=sys.stderr, flush=True))

    @property
    def ws(self) -> Path:
        """The mrdib workspace (MRDIB_HOME) all sections share, so imported datasets are reused."""
        return self.workdir / "ws"

    @property
    def quick(self) -> bool:
        return self.mode == "quick"


def shared_path() -> Path | None:
    """../shared/data (or $MRDIB_SHARED_DATA) if it exists."""
    env = os.environ.get("MRDIB_SHARED_DATA")
    p = Path(env) if env else ROOT.parent / "shared" / "data"
    return p if p.is_dir() else None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def meta(ctx: Context, wall_s: float) -> dict[str, Any]:
    """Machine, versions, date and mode: stored with every section's result (the report prints them)."""
    import faiss
    import torch

    import mrdib_cli

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "mode": ctx.mode,
            "device": ctx.device, "gpu": gpu if ctx.device == "cuda" else None,
            "cpu": _cpu_model(), "cores": os.cpu_count(), "ram_gib": _ram_gib(),
            "python": platform.python_version(), "torch": torch.__version__, "faiss": faiss.__version__,
            "mrdib": mrdib_cli.__version__, "commit": commit, "seeds": ctx.seeds, "jobs": ctx.jobs,
            "threads": ctx.threads, "wall_s": round(wall_s, 1)}


def meta_line(m: dict[str, Any]) -> str:
    """One line under each section heading: where and how its numbers were produced."""
    where = f"GPU {m['gpu']}" if m.get("gpu") else f"CPU ({m['cpu']}, {m['cores']} cores)"
    return (f"*{m['mode']} run, {m['date']}, {where}, torch {m['torch']}, mrdib {m['mrdib']} ({m['commit']}), "
            f"seeds {m['seeds']}, {m['wall_s']:.0f} s.*")


# ------------------------------------------------------------------------------------------- training
@dataclass
class TrainSpec:
    """One `mrdib train` run. ``mrdib``: None = plain backbone, {} = MRdIB defaults, {opt: value} = overrides."""

    dataset: str
    backbone: str
    seed: int
    name: str
    mrdib: dict[str, Any] | None = None
    args: list[str] = field(default_factory=list)

    def argv(self, ctx: Context) -> list[str]:
        a = [sys.executable, "-m", "mrdib_cli", "--workdir", str(ctx.ws), "--quiet", "train",
             "-b", self.backbone, "-d", self.dataset, "--seed", str(self.seed), "-n", self.name,
             "--device", ctx.device, "--threads", str(ctx.threads), "--force"]
        if self.mrdib is not None:
            a += ["--plugin", "mrdib"]
            for k, v in sorted(self.mrdib.items()):
                a += ["--plugin-opt", f"{k}={json.dumps(v) if isinstance(v, bool) else v}"]
        return a + list(self.args)


def cli(ctx: Context, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``mrdib --workdir ctx.ws ARGS`` (import, prepare, diagnose...) and return the finished process."""
    p = subprocess.run([sys.executable, "-m", "mrdib_cli", "--workdir", str(ctx.ws), *args], cwd=ROOT,
                       capture_output=True, text=True, env=_env(ctx))
    if check and p.returncode != 0:
        raise RuntimeError(f"mrdib {' '.join(args)} failed (rc {p.returncode}): {p.stderr.strip()[-2000:]}")
    return p


def _env(ctx: Context) -> dict[str, str]:
    env = dict(os.environ)
    path = [str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env.update({"MRDIB_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(path),
                "OMP_NUM_THREADS": str(max(ctx.threads, 1))})
    return env


def _spec_key(spec: TrainSpec) -> dict[str, Any]:
    """What makes two runs the same run (the device is recorded, not compared: results are device-independent
    up to float rounding, and a section started on a GPU may be finished on a CPU)."""
    return {"spec": asdict(spec)}


def run_dir_result(run_dir: Path) -> dict[str, Any]:
    """Best epoch, valid/test metrics and timing of one finished run, read from the files the trainer wrote."""
    res = json.loads((run_dir / "results.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train_s = [r["time"]["train_s"] for r in rows if "time" in r]
    valid_s = [r["time"]["valid_s"] for r in rows if "time" in r and r["time"].get("valid_s") is not None]
    cpu_s = [r["time"]["train_cpu_s"] for r in rows if r.get("time", {}).get("train_cpu_s") is not None]
    return {"best_epoch": res["best_epoch"], "epochs_run": res["epochs_run"],
            "valid": {m: res["valid"][m] for m in METRICS}, "test": {m: res["test"][m] for m in METRICS},
            "train_s_per_epoch": float(np.median(train_s)) if train_s else None,
            "valid_s_per_pass": float(np.median(valid_s)) if valid_s else None,
            # the process's own CPU seconds: on a shared machine they move far less than wall seconds
            "train_cpu_s_per_epoch": float(np.median(cpu_s)) if cpu_s else None,
            "per_user": str(run_dir / f"per_user-{_test_tag(run_dir)}.parquet")}


def _test_tag(run_dir: Path) -> str:
    """The tag the trainer gave the run's test evaluation (it names the cut-offs when they are not the default)."""
    from mrdib_cli.evaluation.engine import result_tag

    return result_tag("test", ks=json.loads((run_dir / "config.json").read_text())["train"]["ks"])


def _epochs(args: list[str]) -> tuple[list[str], int | None]:
    """``args`` without its ``--epochs N``, and N (None when absent)."""
    if "--epochs" not in args:
        return list(args), None
    i = args.index("--epochs")
    return args[:i] + args[i + 2:], int(args[i + 1])


def extends(old_key: dict[str, Any], key: dict[str, Any]) -> bool:
    """Whether ``key`` is ``old_key``'s run with a larger epoch cap, so the stored run can be continued."""
    old, new = old_key.get("spec"), key["spec"]
    if not old or {k: v for k, v in old.items() if k != "args"} != {k: v for k, v in new.items() if k != "args"}:
        return False
    (rest_old, n_old), (rest_new, n_new) = _epochs(old["args"]), _epochs(new["args"])
    return rest_old == rest_new and n_old is not None and (n_new is None or n_new > n_old)


def _train_one(ctx: Context, spec: TrainSpec, priority: int = 0) -> dict[str, Any]:
    run_dir = ctx.ws / "runs" / spec.name
    stamp = run_dir / "bench-spec.json"
    key = _spec_key(spec)
    out = {"run": spec.name, "dataset": spec.dataset, "backbone": spec.backbone, "seed": spec.seed,
           "mrdib": spec.mrdib}
    argv, wall_before = spec.argv(ctx), 0.0
    if stamp.exists() and (run_dir / "results.json").exists():
        old = json.loads(stamp.read_text())
        if old.get("key") == key:  # same spec, already trained: reuse (run_all can be resumed)
            return {**out, **run_dir_result(run_dir), "wall_s": old["wall_s"], "device": old.get("device"),
                    "gpu": old.get("gpu"), "reused": True}
        if extends(old.get("key", {}), key) and (run_dir / "checkpoints" / "last.pt").exists():
            # a larger epoch cap: continue the stored run (resume is bit-identical to training it at once)
            argv, wall_before = [a for a in argv if a != "--force"] + ["--resume"], float(old["wall_s"])
    with _slots(ctx.jobs).take(priority):
        t0 = time.perf_counter()
        p = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env=_env(ctx))
        wall = wall_before + time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"training {spec.name} failed (rc {p.returncode}): {p.stderr.strip()[-2000:]}")
    gpu = _gpu_name() if ctx.device == "cuda" else None
    stamp.write_text(json.dumps({"key": key, "wall_s": wall, "device": ctx.device, "gpu": gpu}))
    return {**out, **run_dir_result(run_dir), "wall_s": round(wall, 1), "device": ctx.device, "gpu": gpu,
            "reused": False}


class _Slots:
    """At most ``n`` runs at once, handed out lowest priority value first (then first come), so a section that
    runs pipelines side by side (one per backbone) can have the ones its conclusions need finish first."""

    def __init__(self, n: int) -> None:
        self.free, self.cv, self.waiting, self.count = n, threading.Condition(), [], itertools.count()

    @contextmanager
    def take(self, priority: int):
        with self.cv:
            me = (priority, next(self.count))
            heapq.heappush(self.waiting, me)
            self.cv.wait_for(lambda: self.free > 0 and self.waiting[0] == me)
            heapq.heappop(self.waiting)
            self.free -= 1
            self.cv.notify_all()
        try:
            yield
        finally:
            with self.cv:
                self.free += 1
                self.cv.notify_all()


_SLOTS: dict[int, _Slots] = {}
_SLOTS_LOCK = threading.Lock()


def _slots(jobs: int) -> _Slots:
    """One slot pool per job count, shared by every :func:`train_many` call, so a section may run independent
    pipelines in threads and still never train more than ``jobs`` runs at once."""
    with _SLOTS_LOCK:
        return _SLOTS.setdefault(max(jobs, 1), _Slots(max(jobs, 1)))


def _gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def device_counts(runs: list[dict[str, Any]]) -> dict[str, int]:
    """How many runs were trained where ('cpu', or the GPU's name): a section may be finished on another machine."""
    out: dict[str, int] = {}
    for r in runs:
        k = r.get("gpu") or ("GPU" if r.get("device") == "cuda" else "CPU")
        out[k] = out.get(k, 0) + 1
    return out


def train_many(ctx: Context, specs: list[TrainSpec], priority: int = 0) -> list[dict[str, Any]]:
    """Train every spec (ctx.jobs at a time over every caller, lower ``priority`` first, one subprocess each);
    results in the order of ``specs``."""
    done = 0

    def one(spec: TrainSpec) -> dict[str, Any]:
        nonlocal done
        r = _train_one(ctx, spec, priority)
        done += 1
        how = "reused" if r["reused"] else f"{r['wall_s']:.0f} s"
        ctx.log(f"  [{done}/{len(specs)}] {spec.name}: best epoch {r['best_epoch']}, "
                f"test R@20 {r['test']['recall@20']:.4f} ({how})")
        return r

    with ThreadPoolExecutor(max_workers=max(ctx.jobs, 1)) as pool:
        return list(pool.map(one, specs))


# ------------------------------------------------------------------------------------------- statistics
def paired(base_runs: list[dict[str, Any]], new_runs: list[dict[str, Any]],
           metrics: list[str] = METRICS) -> dict[str, dict[str, float]]:
    """Pooled per-user paired tests: each (run pair, user) is one pair (the pairs must share datasets)."""
    import polars as pl

    from mrdib_cli.evaluation.significance import paired_tests

    a_parts, b_parts = [], []
    for a, b in zip(base_runs, new_runs):
        ua = pl.read_parquet(a["per_user"]).select(["user_idx", *metrics])
        ub = pl.read_parquet(b["per_user"]).select(["user_idx", *metrics])
        j = ua.join(ub, on="user_idx", suffix="__b")
        a_parts.append(j.select(metrics).to_numpy())
        b_parts.append(j.select([f"{m}__b" for m in metrics]).to_numpy())
    A, B = np.concatenate(a_parts), np.concatenate(b_parts)
    out: dict[str, dict[str, float]] = {}
    for k, m in enumerate(metrics):
        t = paired_tests(A[:, k], B[:, k])
        out[m] = {"base": t.mean_a, "new": t.mean_b, "n_pairs": t.n_users, "diff": t.mean_diff,
                  "rel": t.mean_diff / t.mean_a if t.mean_a else float("nan"),
                  "p_ttest": t.p_ttest, "p_wilcoxon": t.p_wilcoxon}
    return out


def mean_std(values: list[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def fmt_mean_std(values: list[float], digits: int = 4) -> str:
    m, s = mean_std(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}" if len(values) > 1 else f"{m:.{digits}f}"


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub markdown table (cells are str()-ed)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def save_figure(fig: Any, path: Path) -> str:
    """Write a matplotlib figure as PNG next to the results and close it; returns the file name for render()."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name

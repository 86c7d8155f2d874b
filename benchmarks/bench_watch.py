"""`clipdash watch` at scale, in a real terminal (tmux): first paint, memory, CPU, write→screen lag.

    .venv/bin/python benchmarks/bench_watch.py            # 100 runs x 100,000 steps, + one run
                                                          # with 1,000 parameters x 100,000 steps
    .venv/bin/python benchmarks/bench_watch.py --small    # CI smoke size, no thresholds
    .venv/bin/python benchmarks/bench_watch.py --src /tmp/old-checkout   # another tree's dashboard

The finished runs are built once with RunWriter and reused (--dir). Every figure is read from the
dashboard's own process (/proc) and from what a tmux pane shows (capture-pane at 50 Hz):

- first paint: launch → the title and the visible run names on screen;
- sparklines complete: first paint → every visible row shows a grad-norm sparkline (cold: an
  empty spark cache; warm: a second start, the finished runs' sparklines cached);
- RSS after start-up; CPU over --cpu-seconds in the run list with 0, 1 and 10 live runs
  (each written at --rate steps/s in batches every 0.1 s, as a Tracker flushes) beside the
  finished ones, and 1 live run alone (CPU must not grow with the number of finished runs);
- lag: a step with a distinctive loss committed every 0.25 s → that number in the pane;
- CPU in the run view of a live run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from clipdash.store.writer import RunWriter

TARGETS = {"first_paint_s": 0.5, "sparks_s": 0.5, "cpu_pct": 1.0, "lag_p95_s": 0.1}
COLS, ROWS = 120, 40
SPARK = set("▁▂▃▄▅▆▇█")


def columns(start: int, n: int, n_params: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    steps = np.arange(start, start + n)
    pre = np.exp(rng.normal(0.0, 0.5, n))
    pre[rng.random(n) < 1e-4] *= 100.0  # rare spikes
    coef = np.minimum(1.0, 1.0 / pre)
    return {
        "step": steps, "epoch": steps // 1000, "wall_time": time.time() + 1e-3 * (steps - start),
        "loss": 2.0 * np.exp(-steps / 30_000) + 0.05 * rng.random(n), "lr": np.full(n, 0.1),
        "lr_groups": np.full((n, 1), 0.1), "grad_norm_pre": pre, "grad_norm_post": pre * coef,
        "max_norm": np.ones(n), "clip_coef": coef, "clipped": coef < 1.0,
        "finite": np.ones(n, bool), "max_value": np.full(n, np.nan),
        "param_norms": rng.random((n, n_params), dtype=np.float32),
    }


def new_run(run_dir: Path, n_params: int, total: int | None) -> RunWriter:
    run_dir.mkdir(parents=True)
    w = RunWriter(run_dir)
    w.set_params([(f"layers.{k // 2}.{'weight' if k % 2 == 0 else 'bias'}", (64, 64))
                  for k in range(n_params)])
    w.set_meta(name=run_dir.name, clip_mode="norm", optimizer="SGD")
    w.start(total)
    return w


def build_run(run_dir: Path, steps: int, n_params: int, rng: np.random.Generator,
              batch: int = 25_000) -> None:
    w = new_run(run_dir, n_params, steps)
    for s in range(0, steps, max(1, batch * 20 // n_params)):
        w.append_steps(columns(s, min(batch * 20 // n_params, steps - s), n_params, rng))
    w.add_event(steps // 2, "checkpoint", f"checkpoint at step {steps // 2}")
    w.set_state("finished")
    w.close()


def build(root: Path, runs: int, steps: int, wide_params: int) -> None:
    marker = root / f".built-{runs}x{steps}+{wide_params}"
    if marker.exists():
        print(f"reusing {root}")
        return
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    for i in range(runs):
        build_run(root / f"run-{i:03d}", steps, 20, rng)
        if i % 10 == 9:
            print(f"  built {i + 1}/{runs} runs ({time.perf_counter() - t0:.0f} s)", flush=True)
    build_run(root / "wide-params", steps, wide_params, rng)
    marker.touch()
    size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) / 1e9
    print(f"built {runs} runs x {steps} steps in {time.perf_counter() - t0:.1f} s ({size:.2f} GB)")


class LiveRuns(threading.Thread):
    """`n` runs recording `rate` steps/s each, committed every 0.1 s with a heartbeat."""

    def __init__(self, root: Path, n: int, rate: float) -> None:
        super().__init__(daemon=True)
        self.dirs = [root / f"live-{i:02d}" for i in range(n)]
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)
        self.writers = [new_run(d, 20, None) for d in self.dirs]
        for w in self.writers:
            w.set_state("running")
        self.per_batch = max(1, round(rate / 10))
        self.halt = threading.Event()

    def run(self) -> None:
        rng = np.random.default_rng(2)
        step = 0
        while not self.halt.wait(0.1):
            for w in self.writers:
                w.append_steps(columns(step, self.per_batch, 20, rng))
                w.heartbeat()
            step += self.per_batch

    def finish(self) -> None:
        self.halt.set()
        self.join()
        for w, d in zip(self.writers, self.dirs, strict=True):
            w.set_state("finished")
            w.close()
            shutil.rmtree(d, ignore_errors=True)


class Pane:
    """The dashboard alone in a tmux pane of its own server; the pane's text via capture-pane."""

    made = 0

    def __init__(self, runs_dir: Path, src: Path, cache: Path, cols: int = COLS,
                 rows: int = ROWS) -> None:
        Pane.made += 1  # a socket (tmux server) per pane: a killed server may linger a moment
        self.sock = f"clipdash-bench-{os.getpid()}-{Pane.made}"
        env = (f"PYTHONPATH={src} OMP_NUM_THREADS=1 TERM=xterm-256color "
               f"CLIPDASH_CACHE_DIR={cache}")
        self.t0 = time.perf_counter()
        # Started in `src`: `python -m` puts the current directory first on sys.path.
        self._tmux("new-session", "-d", "-c", str(src), "-x", str(cols), "-y", str(rows),
                   f"exec env {env} {sys.executable} -m clipdash watch {runs_dir}")
        self.pid = int(self._tmux("display-message", "-p", "#{pane_pid}").strip())

    def _tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.sock, *args], check=True,
                              capture_output=True, text=True).stdout

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", *keys)

    def text(self) -> str:
        return self._tmux("capture-pane", "-p")

    def wait_for(self, ok: object, timeout: float) -> float | None:
        """Seconds from launch until `ok(text)` holds, reading the pane 50 times a second."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if ok(self.text()):  # type: ignore[operator]
                return time.perf_counter() - self.t0
            time.sleep(0.02)
        return None

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def cpu_pct(self, seconds: float) -> float:
        c0, t0 = self.cpu_s(), time.perf_counter()
        time.sleep(seconds)
        return 100 * (self.cpu_s() - c0) / (time.perf_counter() - t0)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.sock, "kill-server"], capture_output=True)


def sparks_done(names: list[str]) -> object:
    """Every run row in the pane (at least the first and last expected) shows a sparkline."""
    def ok(text: str) -> bool:
        rows = [ln for ln in text.splitlines() if "run-" in ln or "wide-params" in ln]
        return (any(names[0] in ln for ln in rows) and any(names[-1] in ln for ln in rows)
                and all(SPARK & set(ln) for ln in rows))
    return ok


def measure_lag(pane: Pane, root: Path, samples: int) -> list[float]:
    """Seconds from committing a step whose loss is 7NN.25 to "7NN.2" in the pane."""
    run = root / "live-lag"
    shutil.rmtree(run, ignore_errors=True)
    w = new_run(run, 20, None)
    w.set_state("running")
    rng = np.random.default_rng(3)
    if pane.wait_for(lambda t: "live-lag" in t, 10.0) is None:
        print("  (the lag run never appeared)")
    out = []
    for i in range(samples):
        cols = columns(i, 1, 20, rng)
        cols["loss"] = np.array([700.25 + i % 300])
        needle = f"{700 + i % 300}.2"
        t = time.perf_counter()
        w.append_steps(cols)
        w.heartbeat()
        deadline = t + 2.0
        seen = None
        while time.perf_counter() < deadline:
            if needle in pane.text():
                seen = time.perf_counter() - t
                break
            time.sleep(0.02)
        out.append(float("nan") if seen is None else seen)
        time.sleep(max(0.0, 0.25 - (time.perf_counter() - t)))
    w.set_state("finished")
    w.close()
    shutil.rmtree(run, ignore_errors=True)
    return out


def p95(xs: list[float]) -> float:
    xs = sorted(x for x in xs if x == x)
    return xs[min(len(xs) - 1, int(0.95 * len(xs)))] if xs else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="CI smoke size: 10 runs x 5,000 steps")
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--wide-params", type=int, default=1000)
    ap.add_argument("--dir", type=Path, default=None, help="runs directory to build or reuse")
    ap.add_argument("--src", type=Path, default=Path(__file__).resolve().parents[1],
                    help="source tree whose dashboard is measured (default: this one)")
    ap.add_argument("--cpu-seconds", type=float, default=6.0)
    ap.add_argument("--rate", type=float, default=450.0, help="steps/s of each live run")
    ap.add_argument("--samples", type=int, default=40, help="lag samples (one per 0.25 s)")
    args = ap.parse_args()
    if args.small:
        args.runs, args.steps, args.wide_params = 10, 5000, 100
        args.cpu_seconds, args.samples = 2.0, 12
    if shutil.which("tmux") is None:
        print("bench_watch: needs tmux (apt-get install tmux)")
        return 2
    root = args.dir or Path(f"/tmp/clipdash-bench-{args.runs}x{args.steps}")
    build(root, args.runs, args.steps, args.wide_params)
    alone = root.parent / (root.name + "-alone")
    shutil.rmtree(alone, ignore_errors=True)
    alone.mkdir()
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("run-"))
    visible = names[:min(len(names), ROWS - 12)]
    results: list[tuple[str, float | None, str, float | None]] = []

    cache = root.parent / (root.name + "-cache")
    shutil.rmtree(cache, ignore_errors=True)
    for label in ("cold", "warm"):  # warm: the finished runs' sparklines are in the cache
        pane = Pane(root, args.src, cache)
        paint = pane.wait_for(lambda t: visible[0] in t and visible[-1] in t, 30.0)
        sparks = pane.wait_for(sparks_done(visible), 60.0)
        after = None if paint is None or sparks is None else max(0.0, sparks - paint)
        results += [(f"first paint ({label} start)", paint, "s", TARGETS["first_paint_s"]),
                    (f"sparklines on screen complete, after paint ({label})", after, "s",
                     TARGETS["sparks_s"])]
        if label == "cold":
            pane.close()
    try:
        time.sleep(1.0)
        results += [("RSS after start-up", pane.rss_mb(), "MB", None),
                    (f"CPU, run list, {len(names) + 1} finished runs, none live",
                     pane.cpu_pct(args.cpu_seconds), "% of a core", TARGETS["cpu_pct"])]
        for n in (1, 10):
            live = LiveRuns(root, n, args.rate)
            live.start()
            time.sleep(2.0)  # discovered, first read done
            results.append((f"CPU, {n} live beside {len(names) + 1} finished",
                            pane.cpu_pct(args.cpu_seconds), "% of a core",
                            TARGETS["cpu_pct"] if n == 1 else None))
            live.finish()
        time.sleep(1.0)
        lag = measure_lag(pane, root, args.samples)
        live = LiveRuns(root, 1, args.rate)
        live.start()
        time.sleep(2.0)
        pane.keys("Home", "Enter")  # the run view of the live run (the top row)
        opened = pane.wait_for(lambda t: "clip coef" in t and "live-00" in t, 10.0)
        time.sleep(1.0)
        results.append(("CPU, run view of a live run", pane.cpu_pct(args.cpu_seconds)
                        if opened else None, "% of a core", None))
        live.finish()
        results += [("write → screen lag, median", statistics.median(
                        [x for x in lag if x == x] or [float("nan")]), "s", None),
                    ("write → screen lag, p95", p95(lag), "s", TARGETS["lag_p95_s"]),
                    ("lag samples never shown within 2 s", float(sum(x != x for x in lag)),
                     "", None)]
    finally:
        pane.close()

    pane = Pane(alone, args.src, cache)
    try:
        live = LiveRuns(alone, 1, args.rate)
        live.start()
        pane.wait_for(lambda t: "live-00" in t, 10.0)
        time.sleep(2.0)
        results.append(("CPU, 1 live run alone", pane.cpu_pct(args.cpu_seconds), "% of a core",
                        None))
        live.finish()
    finally:
        pane.close()
        shutil.rmtree(alone, ignore_errors=True)

    print(f"\nclipdash watch ({args.src}) on {len(names)} runs x {args.steps} steps + one with "
          f"{args.wide_params} parameters, {COLS}x{ROWS} tmux pane, {os.cpu_count()} CPUs, "
          f"live runs at {args.rate:g} steps/s")
    for label, value, unit, target in results:
        shown = "-" if value is None else f"{value:.3f}"
        verdict = ""
        if target is not None and not args.small:
            ok = value is not None and value == value and value <= target
            verdict = f"  (target ≤ {target:g}: {'ok' if ok else 'MISSED'})"
        print(f"  {label:<48} {shown:>8} {unit}{verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

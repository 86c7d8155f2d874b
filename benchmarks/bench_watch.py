"""`clipdash watch` on a big runs directory: time to first paint, memory, idle CPU, latency.

    .venv/bin/python benchmarks/bench_watch.py                      # 100 runs x 100,000 steps
    .venv/bin/python benchmarks/bench_watch.py --runs 10 --steps 5000

The runs directory is built once with RunWriter (executemany in big batches, 20 parameter norms a
step) and reused from --dir on later invocations. Two runs are left "running" with a heartbeat
kept by this script, so the dashboard has live runs to poll. The dashboard runs as a real
subprocess on a pseudo-terminal (TERM=xterm-256color, 120x40), and everything is read from what
it writes there:

- first paint: from starting the process to the run list on screen (title "N runs" and the
  first and last visible run names);
- startup work: until the whole-run sparklines of every run are loaded and CPU use settles;
- memory: resident set size (and its peak) after startup, from /proc;
- idle CPU: the process's CPU time over --idle-seconds with nothing new written;
- update latency: from committing a step with a distinctive loss to that number on screen.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import pty
import re
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import numpy as np

from clipdash.store.reader import RunReader
from clipdash.store.writer import RunWriter

TARGETS = {"first_paint_s": 1.0, "rss_mb": 300.0, "idle_cpu_pct": 2.0, "latency_s": 0.5}
ANSI = re.compile(rb"\x1b\[[0-9;?<>=]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>78]"
                  rb"|\x1b\][^\x07]*\x07")
LIVE_RUNS = 2
COLS, ROWS = 120, 40


def columns(start: int, n: int, n_params: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    steps = np.arange(start, start + n)
    pre = np.exp(rng.normal(0.0, 0.5, n))
    pre[rng.random(n) < 1e-4] *= 100.0  # rare spikes
    coef = np.minimum(1.0, 1.0 / pre)
    return {
        "step": steps, "epoch": steps // 1000, "wall_time": 1.7e9 + 0.01 * steps,
        "loss": 2.0 * np.exp(-steps / 30_000) + 0.05 * rng.random(n), "lr": np.full(n, 0.1),
        "lr_groups": np.full((n, 1), 0.1), "grad_norm_pre": pre, "grad_norm_post": pre * coef,
        "max_norm": np.ones(n), "clip_coef": coef, "clipped": coef < 1.0,
        "finite": np.ones(n, bool), "max_value": np.full(n, np.nan),
        "param_norms": rng.random((n, n_params), dtype=np.float32),
    }


def build(root: Path, runs: int, steps: int, n_params: int, batch: int = 25_000) -> None:
    marker = root / f".built-{runs}x{steps}x{n_params}"
    if marker.exists():
        print(f"reusing {root}")
        return
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    for i in range(runs):
        (root / f"run-{i:03d}").mkdir()
        w = RunWriter(root / f"run-{i:03d}")
        w.set_params([(f"layers.{k // 2}.{'weight' if k % 2 == 0 else 'bias'}", (64, 64))
                      for k in range(n_params)])
        w.set_meta(name=f"run-{i:03d}", clip_mode="norm", optimizer="SGD")
        w.start(steps)
        for s in range(0, steps, batch):
            w.append_steps(columns(s, min(batch, steps - s), n_params, rng))
        w.add_event(steps // 2, "checkpoint", f"checkpoint at step {steps // 2}")
        w.set_state("finished")
        w.close()
        if i % 10 == 9:
            print(f"  built {i + 1}/{runs} runs ({time.perf_counter() - t0:.0f} s)", flush=True)
    marker.touch()
    size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) / 1e9
    print(f"built {runs} runs x {steps} steps in {time.perf_counter() - t0:.1f} s ({size:.2f} GB)")


class Heartbeats(threading.Thread):
    """Keeps LIVE_RUNS runs "running", as their trainers would."""

    def __init__(self, dirs: list[Path]) -> None:
        super().__init__(daemon=True)
        self.dirs = dirs
        self.stop = threading.Event()

    def run(self) -> None:
        writers = [RunWriter(d, resume=True) for d in self.dirs]
        for w in writers:
            w.set_state("running")
        while not self.stop.wait(0.5):
            for w in writers:
                w.heartbeat()
        for w in writers:
            w.set_state("finished")
            w.close()


class Terminal:
    """The dashboard on a pseudo-terminal; the text it writes (escape codes removed)."""

    def __init__(self, runs_dir: Path) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
        env = dict(os.environ, TERM="xterm-256color", COLORTERM="truecolor")
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "clipdash", "watch", str(runs_dir)],
                                     stdin=slave, stdout=slave, stderr=slave, env=env,
                                     start_new_session=True)
        os.close(slave)
        self.master = master
        self.text = b""
        self.lock = threading.Lock()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                return
            if not chunk:
                return
            with self.lock:
                self.text += ANSI.sub(b"", chunk)

    def wait_for(self, needles: list[str], timeout: float, since: int = 0) -> float | None:
        """Seconds (from process start) when every needle has appeared after offset `since`."""
        deadline = time.perf_counter() + timeout
        wanted = [n.encode() for n in needles]
        while time.perf_counter() < deadline:
            with self.lock:
                if all(w in self.text[since:] for w in wanted):
                    return time.perf_counter() - self.t0
            time.sleep(0.005)
        return None

    def mark(self) -> int:
        with self.lock:
            return len(self.text)

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def memory_mb(self) -> tuple[float, float]:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        kb = {k: int(v.split()[0]) for k, v in
              (line.split(":", 1) for line in status.splitlines() if line.startswith("Vm"))}
        return kb["VmRSS"] / 1024, kb["VmHWM"] / 1024

    def quit(self) -> float:
        t = time.perf_counter()
        os.write(self.master, b"q")
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        os.close(self.master)
        return time.perf_counter() - t


def settle(term: Terminal, limit: float) -> float:
    """Seconds until a 0.5 s window uses under 5% of a core (the startup scans are done)."""
    start = time.perf_counter()
    while time.perf_counter() - start < limit:
        c0 = term.cpu_s()
        time.sleep(0.5)
        if term.cpu_s() - c0 < 0.025:
            break
    return time.perf_counter() - term.t0


def measure_latency(term: Terminal, run_dir: Path, samples: int) -> list[float]:
    with RunReader(run_dir) as reader:
        steps = (reader.last_step() or 0) + 1  # earlier invocations appended steps too
    writer = RunWriter(run_dir, resume=True)
    rng = np.random.default_rng(1)
    out = []
    for i in range(samples):
        time.sleep(0.3 + 0.4 * rng.random())  # land anywhere in the poll cycle
        cols = columns(steps + i, 1, 20, rng)
        cols["loss"] = np.array([700.0 + i + 0.25])  # shown as e.g. "700.2"
        since = term.mark()
        t = time.perf_counter()
        writer.append_steps(cols)
        seen = term.wait_for([f"{700 + i}.2"], 5.0, since)
        out.append(float("nan") if seen is None else seen - (t - term.t0))
    writer.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--params", type=int, default=20)
    ap.add_argument("--dir", type=Path, default=None,
                    help="runs directory to build or reuse (default /tmp/clipdash-bench-RxS)")
    ap.add_argument("--idle-seconds", type=float, default=5.0)
    ap.add_argument("--samples", type=int, default=8, help="update latency samples")
    args = ap.parse_args()
    root = args.dir or Path(f"/tmp/clipdash-bench-{args.runs}x{args.steps}")
    build(root, args.runs, args.steps, args.params)
    names = sorted(p.name for p in root.iterdir() if p.is_dir())
    live = [root / n for n in names[:LIVE_RUNS]]
    beats = Heartbeats(live)
    beats.start()
    time.sleep(0.3)

    term = Terminal(root)
    visible = names[:min(len(names), ROWS - 8)]
    paint = term.wait_for([f"{len(names)} runs", visible[0], visible[-1]], 30.0)
    settled = settle(term, 120.0)
    rss, _ = term.memory_mb()
    c0, t0 = term.cpu_s(), time.perf_counter()
    time.sleep(args.idle_seconds)
    idle = 100 * (term.cpu_s() - c0) / (time.perf_counter() - t0)
    latency = measure_latency(term, live[0], args.samples)
    since = term.mark()
    os.write(term.master, b"\r")  # open the run view of the first (live) run
    opened = term.wait_for(["max_norm", "clip coef"], 10.0, since)
    time.sleep(1.0)
    c1, t1 = term.cpu_s(), time.perf_counter()
    time.sleep(args.idle_seconds)
    idle_view = 100 * (term.cpu_s() - c1) / (time.perf_counter() - t1)
    rss2, peak = term.memory_mb()
    quit_s = term.quit()
    beats.stop.set()
    beats.join()

    finite = [x for x in latency if x == x]
    lat_med = statistics.median(finite) if finite else float("nan")
    lat_max = max(finite) if finite else float("nan")
    print(f"\nclipdash watch on {len(names)} runs x {args.steps} steps "
          f"({args.params} parameter norms a step), {COLS}x{ROWS} pty, {LIVE_RUNS} live runs")
    rows: list[tuple[str, float | str | None, str, float | None]] = [
        ("time to first paint", paint, "s", TARGETS["first_paint_s"]),
        ("startup work done (visible sparklines)", settled, "s", None),
        ("memory (RSS) after startup", rss, "MB", TARGETS["rss_mb"]),
        ("memory (RSS) at the end / peak", f"{rss2:.0f} / {peak:.0f}", "MB", TARGETS["rss_mb"]),
        ("idle CPU, run list", idle, "% of a core", TARGETS["idle_cpu_pct"]),
        ("idle CPU, run view of a live run", idle_view if opened else None, "% of a core",
         TARGETS["idle_cpu_pct"]),
        ("update latency, median", lat_med, "s", TARGETS["latency_s"]),
        ("update latency, max", lat_max, "s", TARGETS["latency_s"]),
        ("quit", quit_s, "s", None),
    ]
    failed = False
    for label, value, unit, target in rows:
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        unit = unit if value is not None else "(not measured)"
        verdict = ""
        if target is not None:
            num = peak if isinstance(value, str) else value
            ok = num is not None and num == num and num < target
            failed |= not ok
            verdict = f"  (target < {target:g} {unit}: {'ok' if ok else 'MISSED'})"
        print(f"  {label:<38} {shown:>10} {unit}{verdict}")
    if paint is None:
        print("  the run list never appeared")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

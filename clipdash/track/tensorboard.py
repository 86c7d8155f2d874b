"""TensorBoard sink: a run's records as events.out.tfevents.* in the run directory.

Each training step is one event carrying every scalar and the per-parameter histogram. The steps
of a batch are encoded together with numpy (`tfrecord`), so a step costs a few microseconds of the
writer thread; `SummaryWriter.add_scalar` costs tens of microseconds per value. Evaluations,
text events and extensions' values are rare and go through tensorboard's protobuf classes.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from collections.abc import Sequence
from io import BufferedWriter
from pathlib import Path

import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2

from clipdash.store.schema import TB_SCALARS, TB_SPARSE_SCALARS
from clipdash.track import tfrecord
from clipdash.track.tfrecord import Layout

TEXT_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="text"))
HISTOGRAM_BINS = 30
_file_ids = itertools.count()

# Scalar tags of every step and the step field each comes from (declared in the step schema);
# sparse ones are written only where the value is set (clip/max_norm: not in an adaptive mode).
STEP_SCALARS = TB_SCALARS
SPARSE_SCALARS = TB_SPARSE_SCALARS


def _text(tag: str, text: str) -> summary_pb2.Summary.Value:
    tensor = tensor_pb2.TensorProto(
        dtype=7,  # DT_STRING
        string_val=[text.encode()],
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1)]))
    return summary_pb2.Summary.Value(tag=tag, metadata=TEXT_METADATA, tensor=tensor)


def histograms(values: np.ndarray, bins: int) -> dict[str, np.ndarray]:
    """One histogram per row over its finite values, as np.histogram(row, bins) computes it.

    Returns min, max, num, sum, sum_squares ([n]) and bucket_limit, bucket ([n, bins]).
    Rows without a finite value have num == 0.
    """
    v = values.astype(np.float64)
    finite = np.isfinite(v)
    num = finite.sum(axis=1)
    lo = np.where(finite, v, np.inf).min(axis=1)
    hi = np.where(finite, v, -np.inf).max(axis=1)
    empty = num == 0
    lo[empty], hi[empty] = 0.0, 1.0
    zero = np.where(finite, v, 0.0)
    # np.histogram's range for a single distinct value, and its edges and bin search.
    first = np.where(lo == hi, lo - 0.5, lo)
    last = np.where(lo == hi, hi + 0.5, hi)
    # Past ~1e16 the +-0.5 vanishes in float64: widen relative to the value instead.
    flat_range = last <= first
    widen = np.maximum(np.abs(lo) * 1e-6, 0.5)
    first = np.where(flat_range, lo - widen, first)
    last = np.where(flat_range, hi + widen, last)
    edges = np.linspace(first, last, bins + 1, axis=1)
    norm = bins / (last - first)
    idx = ((zero - first[:, None]) * norm[:, None]).astype(np.intp)
    idx = np.clip(idx, 0, bins - 1)
    rows = np.arange(len(v))[:, None]
    idx -= zero < edges[rows, idx]
    idx += (zero >= edges[rows, idx + 1]) & (idx != bins - 1)
    flat = (rows * bins + idx)[finite]
    counts = np.bincount(flat, minlength=len(v) * bins).reshape(len(v), bins)
    return {"min": lo, "max": hi, "num": num.astype(np.float64), "sum": zero.sum(axis=1),
            "sum_squares": np.einsum("ij,ij->i", zero, zero), "bucket_limit": edges[:, 1:],
            "bucket": counts.astype(np.float64)}


class TensorBoardSink:
    """Writes a run's records as events.out.tfevents.* in the run directory."""

    def __init__(self, run_dir: str | Path, param_names: Sequence[str],
                 per_param_scalars: bool = False, purge_from: int | None = None) -> None:
        self.per_param_scalars = per_param_scalars
        self.set_param_names(param_names)
        self.file: BufferedWriter = self._open(Path(run_dir))
        self._write_event(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))
        if purge_from is not None:
            self.purge(purge_from)
        self.file.flush()

    def purge(self, step: int) -> None:
        """TensorBoard drops what was written at or after `step` before this marker (earlier
        files included): a resumed or rewound run keeps one value per step, not two lines."""
        self._write_event(event_pb2.Event(
            wall_time=time.time(), step=step,
            session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))
        self.file.flush()

    def set_param_names(self, names: Sequence[str]) -> None:
        """The parameters' names in blob order (the set grew: a new layout from now on)."""
        self.param_names = list(names)
        self.bins = max(1, min(HISTOGRAM_BINS, len(self.param_names)))
        self._layouts: dict[tuple[int, int, int, bool, int], Layout] = {}

    @staticmethod
    def _open(run_dir: Path) -> BufferedWriter:
        run_dir.mkdir(parents=True, exist_ok=True)
        while True:  # the name TensorBoard expects: events.out.tfevents.<time>.<host>.<pid>.<n>
            name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
                    f"{os.getpid()}.{next(_file_ids)}")
            try:
                return open(run_dir / name, "xb")  # noqa: SIM115 - closed by close()
            except FileExistsError:
                continue

    # -- steps, batched ------------------------------------------------------------------------

    def _layout(self, step_width: int, n_groups: int, sparse: int, has_hist: bool,
                n_params: int) -> Layout:
        key = (step_width, n_groups, sparse, has_hist, n_params)
        layout = self._layouts.get(key)
        if layout is None:
            values = [tfrecord.scalar_value(tag, col) for tag, col in STEP_SCALARS]
            values.extend(tfrecord.scalar_value(tag, col)
                          for bit, (tag, col) in enumerate(SPARSE_SCALARS) if sparse >> bit & 1)
            values.extend(tfrecord.scalar_value(f"lr/group_{g}", f"lr{g}")
                          for g in range(n_groups))
            if has_hist:
                values.append(tfrecord.histogram_value("grad_norm/per_param", "h", self.bins))
            if n_params and self.per_param_scalars:
                values.extend(tfrecord.scalar_value(f"grad_norm/param/{name}", f"p{i}")
                              for i, name in enumerate(self.param_names[:n_params]))
            layout = self._layouts[key] = tfrecord.event_layout(step_width, values)
        return layout

    def write_steps(self, cols: dict[str, np.ndarray]) -> None:
        steps = np.asarray(cols["step"], np.int64)
        n = len(steps)
        if n == 0:
            return
        lr_groups = np.asarray(cols["lr_groups"], np.float64).reshape(n, -1)
        norms = cols.get("param_norms")
        f32 = {col: tfrecord.as_bytes(np.asarray(cols[col], np.float32), "<f4")
               for _, col in (*STEP_SCALARS, *SPARSE_SCALARS)}
        for g in range(lr_groups.shape[1]):
            f32[f"lr{g}"] = tfrecord.as_bytes(lr_groups[:, g].astype(np.float32), "<f4")
        f32["wall_time"] = tfrecord.as_bytes(np.asarray(cols["wall_time"], np.float64), "<f8")
        has_hist = np.zeros(n, bool)
        if norms is not None and norms.shape[1] > 0:
            hist = histograms(norms, self.bins)
            has_hist = hist["num"] > 0
            for name, data in hist.items():
                f32[f"h.{name}"] = tfrecord.as_bytes(data, "<f8")
            if self.per_param_scalars:
                for i in range(norms.shape[1]):
                    f32[f"p{i}"] = tfrecord.as_bytes(norms[:, i].astype(np.float32), "<f4")
        widths = tfrecord.varint_len(steps)
        sparse = np.zeros(n, np.int64)
        for bit, (_, col) in enumerate(SPARSE_SCALARS):
            sparse |= (~np.isnan(np.asarray(cols[col], np.float64))).astype(np.int64) << bit
        n_params = norms.shape[1] if norms is not None else 0
        # Rows with the same layout are encoded together; runs of them are written in step order
        # (TensorBoard drops values when a tag's step goes backwards).
        group = (widths << (len(SPARSE_SCALARS) + 1)) + (sparse << 1) + has_hist
        framed: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for g in np.unique(group).tolist():
            rows = np.flatnonzero(group == g)
            width = int(widths[rows[0]])
            layout = self._layout(width, lr_groups.shape[1], int(sparse[rows[0]]),
                                  bool(has_hist[rows[0]]), n_params)
            whole = len(rows) == n  # the usual batch: one layout, no row selection to copy
            values = {name: data if whole else data[rows] for name, data in f32.items()
                      if name in layout.slots}
            values["step"] = tfrecord.varint_rows(steps if whole else steps[rows], width)
            framed[g] = (rows, tfrecord.frame_rows(layout.fill(len(rows), values), layout.crc))
        if len(framed) == 1:
            self.file.write(next(iter(framed.values()))[1].tobytes())
        else:
            position = {g: np.searchsorted(rows, np.arange(n)) for g, (rows, _) in framed.items()}
            starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
            for start, stop in zip(starts.tolist(), [*starts[1:].tolist(), n], strict=True):
                g = int(group[start])
                out = framed[g][1]
                self.file.write(out[position[g][start]:position[g][start] + stop - start]
                                .tobytes())
        self.file.flush()

    # -- rare records --------------------------------------------------------------------------

    def write_eval(self, step: int, metrics: dict[str, float]) -> None:
        self.write_raw(step, [summary_pb2.Summary.Value(tag=f"{k}/val", simple_value=float(v))
                              for k, v in metrics.items()])

    def write_event(self, step: int | None, kind: str, message: str) -> None:
        self.write_raw(step or 0, [_text("events", f"[{kind}] {message}")])

    def write_raw(self, step: int, values: list[summary_pb2.Summary.Value]) -> None:
        """For extensions (sweep hyperparameters): already-built summary values."""
        self._write_event(event_pb2.Event(wall_time=time.time(), step=step,
                                          summary=summary_pb2.Summary(value=values)))
        self.file.flush()

    def _write_event(self, event: event_pb2.Event) -> None:
        self.file.write(tfrecord.frame(event.SerializeToString()))

    def flush(self) -> None:
        if not self.file.closed:
            self.file.flush()

    def close(self) -> None:
        if not self.file.closed:
            self.file.close()

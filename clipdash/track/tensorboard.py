"""TensorBoard sink: tensorboard's own event writer, one event per step carrying every scalar.

`SummaryWriter.add_scalar` writes one event per value (~80 us each); packing a step's ten or so
scalars and its per-parameter histogram into one event costs a few microseconds per value.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

TEXT_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="text"))
HISTOGRAM_BINS = 30


def _scalar(tag: str, value: float) -> summary_pb2.Summary.Value:
    return summary_pb2.Summary.Value(tag=tag, simple_value=value)


def _histogram(tag: str, values: np.ndarray) -> summary_pb2.Summary.Value | None:
    values = values[np.isfinite(values)].astype(np.float64)
    if values.size == 0:
        return None
    counts, edges = np.histogram(values, bins=min(HISTOGRAM_BINS, max(1, values.size)))
    proto = summary_pb2.HistogramProto(
        min=float(values.min()), max=float(values.max()), num=float(values.size),
        sum=float(values.sum()), sum_squares=float(np.dot(values, values)),
        bucket_limit=edges[1:].tolist(), bucket=counts.astype(np.float64).tolist())
    return summary_pb2.Summary.Value(tag=tag, histo=proto)


def _text(tag: str, text: str) -> summary_pb2.Summary.Value:
    tensor = tensor_pb2.TensorProto(
        dtype=7,  # DT_STRING
        string_val=[text.encode()],
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1)]))
    return summary_pb2.Summary.Value(tag=tag, metadata=TEXT_METADATA, tensor=tensor)


class TensorBoardSink:
    """Writes a run's records as events.out.tfevents.* in the run directory."""

    def __init__(self, run_dir: str | Path, param_names: Sequence[str],
                 per_param_scalars: bool = False, purge_from: int | None = None) -> None:
        self.writer = EventFileWriter(str(run_dir), max_queue_size=1024, flush_secs=5)
        self.param_names = list(param_names)
        self.per_param_scalars = per_param_scalars
        if purge_from is not None:
            # TensorBoard drops events at or after this step from earlier files: a resumed run
            # keeps one value per step instead of two overlapping lines.
            self.writer.add_event(event_pb2.Event(
                wall_time=time.time(), step=purge_from,
                session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))

    def write_steps(self, cols: dict[str, np.ndarray]) -> None:
        lr_groups = cols["lr_groups"]
        norms = cols.get("param_norms")
        for i, step in enumerate(cols["step"].tolist()):
            values = [
                _scalar("loss/train", float(cols["loss"][i])),
                _scalar("grad_norm/pre_clip", float(cols["grad_norm_pre"][i])),
                _scalar("grad_norm/post_clip", float(cols["grad_norm_post"][i])),
                _scalar("clip/coef", float(cols["clip_coef"][i])),
                _scalar("clip/clipped", float(cols["clipped"][i])),
            ]
            threshold = float(cols["max_norm"][i])
            if threshold == threshold:
                values.append(_scalar("clip/max_norm", threshold))
            values.extend(_scalar(f"lr/group_{g}", float(lr)) for g, lr in enumerate(lr_groups[i]))
            if norms is not None:
                hist = _histogram("grad_norm/per_param", norms[i])
                if hist is not None:
                    values.append(hist)
                if self.per_param_scalars:
                    values.extend(_scalar(f"grad_norm/param/{name}", float(v))
                                  for name, v in zip(self.param_names, norms[i], strict=True))
            self._emit(step, float(cols["wall_time"][i]), values)

    def write_eval(self, step: int, metrics: dict[str, float]) -> None:
        self._emit(step, time.time(), [_scalar(f"{k}/val", float(v)) for k, v in metrics.items()])

    def write_event(self, step: int | None, kind: str, message: str) -> None:
        self._emit(step or 0, time.time(), [_text("events", f"[{kind}] {message}")])

    def write_raw(self, step: int, values: list[summary_pb2.Summary.Value]) -> None:
        """For extensions (sweep hyperparameters): already-built summary values."""
        self._emit(step, time.time(), values)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

    def _emit(self, step: int, wall_time: float, values: list[summary_pb2.Summary.Value]) -> None:
        self.writer.add_event(event_pb2.Event(
            wall_time=wall_time, step=step, summary=summary_pb2.Summary(value=values)))

"""TFRecord checksums of batched events against tensorboard's own (pure-Python) CRC-32C."""

from __future__ import annotations

import numpy as np
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import crc32c, masked_crc32c

from clipdash.track import tfrecord


def _layout() -> tfrecord.Layout:
    values = [tfrecord.scalar_value(f"tag/{i}", f"s{i}") for i in range(5)]
    values.append(tfrecord.histogram_value("grad_norm/per_param", "h", 7))
    return tfrecord.event_layout(2, values)


def test_template_checksum_matches_whole_rows_and_tensorboard() -> None:
    layout = _layout()
    rng = np.random.default_rng(0)
    n = 9
    values = {name: rng.integers(0, 256, (n, size), dtype=np.uint8)
              for name, (_, size) in layout.slots.items()}
    values["s0"][0] = 0  # a slot left at the template's zeros
    rows = layout.fill(n, values)
    fast = layout.crc(rows)
    assert fast.tolist() == tfrecord.crc32c_rows(rows).tolist()
    assert fast.tolist() == [crc32c(row.tobytes()) for row in rows]


def test_framed_records_carry_tensorboards_checksums() -> None:
    layout = _layout()
    rows = layout.fill(3, {"s1": np.full((3, 4), 7, np.uint8)})
    framed = tfrecord.frame_rows(rows, layout.crc)
    length = layout.size
    for row, out in zip(rows, framed, strict=True):
        header = int(length).to_bytes(8, "little")
        assert out[:8].tobytes() == header
        assert int.from_bytes(out[8:12].tobytes(), "little") == masked_crc32c(header)
        assert out[12:12 + length].tobytes() == row.tobytes()
        assert int.from_bytes(out[-4:].tobytes(), "little") == masked_crc32c(row.tobytes())


def test_rows_longer_than_the_table_are_checksummed_whole() -> None:
    values = [tfrecord.scalar_value(f"grad_norm/param/{i:04d}", f"p{i}") for i in range(120)]
    layout = tfrecord.event_layout(1, values)
    assert layout.size > 1024
    rows = layout.fill(2, {f"p{i}": np.full((2, 4), i % 251, np.uint8) for i in range(120)})
    assert layout.crc(rows).tolist() == [crc32c(row.tobytes()) for row in rows]

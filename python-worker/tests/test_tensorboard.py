"""The coordinator writes TensorBoard event files by hand (src/run/tensorboard.ts). tests/fixtures/tb/ holds what it
writes for a 4-step run followed by a run resumed at step 3 (test/tensorboard.test.ts checks that the writer still
produces exactly these bytes). Here TensorBoard's own reader loads them, and an independent crc32c checks the
framing."""
from __future__ import annotations

import math
import struct
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

FIXTURES = Path(__file__).parent / "fixtures"
TB = FIXTURES / "tb"


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def masked(crc: int) -> int:
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def test_crc32c_check_value():
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(bytes(32)) == 0x8A9136AA


def test_every_record_has_good_masked_crcs():
    files = sorted(TB.glob("events.out.tfevents.*"))
    assert len(files) == 2
    for f in files:
        buf = f.read_bytes()
        off, records = 0, 0
        while off < len(buf):
            (length,) = struct.unpack_from("<Q", buf, off)
            (len_crc,) = struct.unpack_from("<I", buf, off + 8)
            assert len_crc == masked(crc32c(buf[off:off + 8])), f"{f.name}: length crc at {off}"
            data = buf[off + 12:off + 12 + length]
            (data_crc,) = struct.unpack_from("<I", buf, off + 12 + length)
            assert data_crc == masked(crc32c(data)), f"{f.name}: data crc at {off}"
            off += 16 + length
            records += 1
        assert off == len(buf) and records >= 2


def test_tensorboard_reads_scalars_images_and_drops_the_resumed_steps():
    acc = EventAccumulator(str(TB), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    assert acc.file_version == 2.0
    tags = acc.Tags()
    assert sorted(tags["scalars"]) == ["loss/loss_dmd", "lr/lr_generator"]
    assert tags["images"] == ["samples/grid"]

    dmd = acc.Scalars("loss/loss_dmd")
    # steps 1-2 from the first run (2 was non-finite: NaN), 3-5 from the resumed run (its session start at step 3
    # drops the first run's steps 3 and 4)
    assert [e.step for e in dmd] == [1, 2, 3, 4, 5]
    assert dmd[0].value == 0.5 and math.isnan(dmd[1].value)
    assert [e.value for e in dmd[2:]] == [13.0, 14.0, 15.0]
    assert [e.wall_time for e in dmd] == [1700000001.0, 1700000002.0, 1700000101.0, 1700000102.0, 1700000103.0]
    lr = acc.Scalars("lr/lr_generator")
    assert [e.step for e in lr] == [1, 2, 3, 4, 5]
    for e in lr:
        assert math.isclose(e.value, 1e-5 * e.step, rel_tol=1e-6)

    png = (FIXTURES / "grid.png").read_bytes()
    images = acc.Images("samples/grid")
    assert [e.step for e in images] == [2, 5]
    for e in images:
        assert (e.width, e.height) == (38, 38)
        assert e.encoded_image_string == png

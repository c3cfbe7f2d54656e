"""Whether a zstd stream's frames are small enough to decode on several threads.

Only frames that announce a bounded size are decoded ahead on other threads: pzstd writes a
skippable frame holding the next frame's size before each one, and `model-fetch pack` (like
zstd given a file) writes each frame's content size. A stream without either (`tar -I zstd`,
anything piped) is usually one large frame, which is better served by the single-thread
decoder that can resume inside it.
"""

from __future__ import annotations

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
PZSTD_SIZE_FRAME = b"\x50\x2a\x4d\x18\x04\x00\x00\x00"  # skippable frame 0, 4-byte payload
# Above this a frame that fails late, or a kill inside it, costs too much to give up the
# resume inside frames that the single-thread decoder offers.
PARALLEL_FRAME_LIMIT = 64 << 20
# Enough of the stream to read a pzstd size frame and a frame header behind it.
HEAD_BYTES = 12 + 18


def frames_are_bounded(head: bytes) -> bool:
    """True when the stream's first frame announces a size of at most PARALLEL_FRAME_LIMIT."""
    if head.startswith(PZSTD_SIZE_FRAME):
        return True
    if not head.startswith(ZSTD_MAGIC) or len(head) < 6:
        return False
    descriptor = head[4]
    fcs_flag, single_segment, dict_flag = descriptor >> 6, (descriptor >> 5) & 1, descriptor & 3
    fcs_size = (1 if single_segment else 0, 2, 4, 8)[fcs_flag]
    if not fcs_size:
        return False
    start = 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[dict_flag]
    field = head[start : start + fcs_size]
    if len(field) < fcs_size:
        return False
    size = int.from_bytes(field, "little") + (256 if fcs_size == 2 else 0)
    return size <= PARALLEL_FRAME_LIMIT

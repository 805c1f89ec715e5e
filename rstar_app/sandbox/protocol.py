"""Framing of the messages between the parent, the zygote and the workers.

A frame is a JSON header plus an optional opaque blob (a pickled snapshot):

    [4 bytes: header length][header: UTF-8 JSON][4 bytes: blob length][blob]

JSON, not pickle, on purpose: the parent must never unpickle anything a worker wrote, because a
worker runs untrusted code and could write anything. Blobs are passed through as bytes.
"""

from __future__ import annotations

import json
import os
import select
import struct
import time

_LEN = struct.Struct(">I")


class ProtocolError(Exception):
    """The other side sent something malformed, too large, or hung up mid-frame."""


def encode(header: dict, blob: bytes = b"") -> bytes:
    head = json.dumps(header, ensure_ascii=True, separators=(",", ":")).encode()
    return _LEN.pack(len(head)) + head + _LEN.pack(len(blob)) + blob


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class FrameReader:
    """Reads one frame from a pipe with a deadline and size caps (the writer is untrusted)."""

    def __init__(self, fd: int, *, max_header: int, max_blob: int) -> None:
        self.fd = fd
        self.max_header = max_header
        self.max_blob = max_blob
        self.buf = bytearray()

    def read(self, deadline: float | None) -> tuple[dict, bytes] | None:
        """The frame, or None when the deadline passed first. Raises ProtocolError on EOF or
        malformed data."""
        while True:
            frame = self._parse()
            if frame is not None:
                return frame
            timeout = None if deadline is None else deadline - time.monotonic()
            if timeout is not None and timeout <= 0:
                return None
            ready, _, _ = select.select([self.fd], [], [], timeout)
            if not ready:
                return None
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                raise ProtocolError("end of stream before a complete message")
            self.buf += chunk

    def _parse(self) -> tuple[dict, bytes] | None:
        buf = self.buf
        if len(buf) < 4:
            return None
        (hlen,) = _LEN.unpack_from(buf, 0)
        if hlen > self.max_header:
            raise ProtocolError(f"header of {hlen} bytes exceeds {self.max_header}")
        if len(buf) < 8 + hlen:
            return None
        (blen,) = _LEN.unpack_from(buf, 4 + hlen)
        if blen > self.max_blob:
            raise ProtocolError(f"blob of {blen} bytes exceeds {self.max_blob}")
        end = 8 + hlen + blen
        if len(buf) < end:
            return None
        try:
            header = json.loads(bytes(buf[4:4 + hlen]).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:  # '[[[[...' nests past the stack
            raise ProtocolError(f"malformed header: {type(e).__name__}") from None
        if not isinstance(header, dict):
            raise ProtocolError("header is not an object")
        blob = bytes(buf[8 + hlen:end])
        del buf[:end]
        return header, blob


def read_frame(fd: int, *, max_header: int, max_blob: int,
               deadline: float | None = None) -> tuple[dict, bytes]:
    """Blocking read of one frame (used by the trusted side of a pipe)."""
    frame = FrameReader(fd, max_header=max_header, max_blob=max_blob).read(deadline)
    if frame is None:
        raise ProtocolError("timed out waiting for a message")
    return frame

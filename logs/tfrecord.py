"""TFRecord framing, without TensorFlow: every record is its length, the length's masked
CRC-32C, the bytes, and their masked CRC-32C.

The generator frames millions of records at once (numpy, `mask_crc` on arrays), the Beam
jobs one at a time; both use this one definition, and the strict reader checks it.
"""

from __future__ import annotations

import struct
import zlib
from typing import BinaryIO, Iterator, TypeVar

import google_crc32c
import numpy as np

Crc = TypeVar("Crc", int, np.ndarray)


class CorruptFileError(Exception):
    """A TFRecord file whose bytes are damaged; the message says how."""


def mask_crc(crc: Crc) -> Crc:
    """TFRecord's mask of a CRC-32C: an int, or a uint64 array of them."""
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    return mask_crc(google_crc32c.value(data))


def write(handle: BinaryIO, record: bytes) -> None:
    """One framed record."""
    length = struct.pack("<Q", len(record))
    handle.write(length + struct.pack("<I", masked_crc(length)) + record + struct.pack("<I", masked_crc(record)))


def read(stream: BinaryIO) -> Iterator[bytes]:
    """The records of an uncompressed stream (e.g. a `gzip.GzipFile`), checking every byte.

    Raises CorruptFileError on a cut or damaged record, or on bad compressed data underneath.
    """
    try:
        while header := stream.read(12):
            if len(header) < 12:
                raise CorruptFileError("a record header is cut short")
            length, length_crc = struct.unpack("<QI", header)
            if masked_crc(header[:8]) != length_crc:
                raise CorruptFileError("a record length fails its checksum")
            record, footer = stream.read(length), stream.read(4)
            if len(record) < length or len(footer) < 4:
                raise CorruptFileError("a record is cut short")
            if masked_crc(record) != struct.unpack("<I", footer)[0]:
                raise CorruptFileError("a record fails its checksum")
            yield record
    except (EOFError, OSError, zlib.error) as error:  # gzip.BadGzipFile is an OSError
        raise CorruptFileError(f"bad GZIP data: {error}") from None

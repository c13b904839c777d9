"""The ``.slim`` container: a state dict stored so that sparse and clustered
tensors really take less space, and read back bit-exactly.

Layout (little-endian):
    b"SLIM" | uint8 version (1) | uint32 header length | header (JSON, UTF-8) | zstd frame (payload)
The header lists every tensor: name, dtype, shape, encoding, byte offset and
length in the decompressed payload. Encodings, chosen per tensor, smallest wins:
    dense     raw values
    bitmask   np.packbits(values != 0) followed by the non-zero values in order
    codebook  the distinct values (<= 256) followed by one uint8 index per element (version 1 only)
    packed    uint16 K, the K distinct values, then ceil(log2 K)-bit indices, bit-packed (LSB first)
    sparse    np.packbits(values != 0), uint16 K, the K distinct non-zero values, then the
              non-zeros' ceil(log2 K)-bit indices, bit-packed: pruned *and* clustered tensors
    gaps      relative-index coding of the non-zero positions (Deep Compression): uint32 G, then G bytes,
              each either a gap 0..254 to the next non-zero or 255 = "skip 255 positions, no value";
              then the non-zero values (``gaps``) or uint16 K + codebook + packed indices (``gaps_book``)
zstd (level 10, ``core.io.ZSTD_LEVEL``) then entropy-codes the whole payload. No pickle anywhere: the
loader parses JSON and raw arrays only.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..core.errors import LoadError
from ..core.io import ZSTD_LEVEL, atomic_path

MAGIC, VERSION = b"SLIM", 2
READABLE = (1, 2)


def _bits(k: int) -> int:
    return max(1, int(np.ceil(np.log2(max(k, 2)))))


def _pack(idx: np.ndarray, bits: int) -> bytes:
    planes = (idx[:, None].astype(np.uint16) >> np.arange(bits, dtype=np.uint16)) & 1
    return np.packbits(planes.astype(np.uint8).reshape(-1), bitorder="little").tobytes()


def _unpack(buf: bytes, n: int, bits: int) -> np.ndarray:
    planes = np.unpackbits(np.frombuffer(buf, np.uint8), count=n * bits, bitorder="little").reshape(n, bits)
    return (planes.astype(np.int64) << np.arange(bits)).sum(1)


def _book(values: np.ndarray) -> bytes | None:
    uniq = np.unique(values)
    if uniq.size > 256 or uniq.size == 0:
        return None
    idx = np.searchsorted(uniq, values)
    return struct.pack("<H", uniq.size) + uniq.tobytes() + _pack(idx, _bits(uniq.size))


def _gap_bytes(nz: np.ndarray) -> bytes:
    pos = np.flatnonzero(nz)
    gaps = np.diff(np.concatenate([[-1], pos])) - 1
    esc = gaps // 255  # each gap: esc escape bytes (255), then its remainder
    reps = esc + 1
    vals = np.full(int(reps.sum()), 255, np.uint8)
    ends = np.cumsum(reps) - 1
    vals[ends] = (gaps % 255).astype(np.uint8)
    return struct.pack("<I", vals.size) + vals.tobytes()


def _read_gaps(blob: bytes, n: int) -> tuple[np.ndarray, int]:
    g = struct.unpack("<I", blob[:4])[0]
    b = np.frombuffer(blob[4:4 + g], np.uint8).astype(np.int64)
    adv = np.where(b == 255, 255, b + 1)
    pos = (np.cumsum(adv) - 1)[b != 255]
    if pos.size and pos[-1] >= n:
        raise ValueError("gap stream points past the tensor")
    return pos, 4 + g


def _encodings(a: np.ndarray) -> list[tuple[str, bytes]]:
    flat = a.reshape(-1)
    out = [("dense", flat.tobytes())]
    if a.dtype.kind == "f":
        nz = flat != 0
        mask = np.packbits(nz).tobytes()
        out.append(("bitmask", mask + flat[nz].tobytes()))
        book = _book(flat)
        if book is not None:
            out.append(("packed", book))
        book = _book(flat[nz]) if nz.any() else None
        if book is not None:
            out.append(("sparse", mask + book))
        if nz.any():
            gb = _gap_bytes(nz)
            out.append(("gaps", gb + flat[nz].tobytes()))
            if book is not None:
                out.append(("gaps_book", gb + book))
    return out


def _read_book(blob: bytes, dt: np.dtype, n: int) -> np.ndarray:
    k = struct.unpack("<H", blob[:2])[0]
    book = np.frombuffer(blob[2:2 + k * dt.itemsize], dtype=dt)
    return book[_unpack(blob[2 + k * dt.itemsize:], n, _bits(k))]


def save_slim(model_or_state, path) -> dict:
    """Write ``path`` atomically; return sizes {raw_bytes, payload_bytes, file_bytes} and encodings used."""
    import zstandard

    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    header, chunks, off, raw = [], [], 0, 0
    for name, t in state.items():
        a = t.detach().cpu().numpy()
        raw += a.nbytes
        enc, blob = min(_encodings(a), key=lambda e: len(e[1]))
        header.append({"name": name, "dtype": str(a.dtype), "shape": list(a.shape), "enc": enc, "off": off,
                       "len": len(blob)})
        chunks.append(blob)
        off += len(blob)
    payload = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(b"".join(chunks))
    h = json.dumps({"tensors": header}).encode()
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(MAGIC + struct.pack("<BI", VERSION, len(h)) + h + payload)
    used: dict = {}
    for e in header:
        used[e["enc"]] = used.get(e["enc"], 0) + 1
    return {"raw_bytes": raw, "payload_bytes": off, "file_bytes": Path(path).stat().st_size, "encodings": used}


def load_slim(path, model: nn.Module | None = None):
    """Read a .slim file; with ``model``, load the weights into it (strict) and return it,
    else return the state dict."""
    import zstandard

    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise LoadError(f"cannot read {p}: {e.strerror}") from None
    if data[:4] != MAGIC or len(data) < 9:
        raise LoadError(f"{p} is not a .slim file (bad magic)")
    version, hlen = struct.unpack("<BI", data[4:9])
    if version not in READABLE:
        raise LoadError(f"{p} is .slim version {version}; this slimkit reads versions {READABLE}")
    try:
        header = json.loads(data[9:9 + hlen])["tensors"]
        payload = zstandard.ZstdDecompressor().decompress(data[9 + hlen:])
    except Exception as e:  # noqa: BLE001 - any corruption
        raise LoadError(f"{p} is corrupt or truncated ({type(e).__name__}); write it again with save_slim") from None
    state = {}
    for e in header:
        blob = payload[e["off"]:e["off"] + e["len"]]
        dt, shape = np.dtype(e["dtype"]), tuple(e["shape"])
        n = int(np.prod(shape)) if shape else 1
        if e["enc"] == "dense":
            a = np.frombuffer(blob, dtype=dt, count=n).copy()
        elif e["enc"] == "bitmask":
            nb = (n + 7) // 8
            mask = np.unpackbits(np.frombuffer(blob[:nb], np.uint8), count=n).astype(bool)
            a = np.zeros(n, dt)
            a[mask] = np.frombuffer(blob[nb:], dtype=dt, count=int(mask.sum()))
        elif e["enc"] == "codebook":
            k = struct.unpack("<H", blob[:2])[0]
            book = np.frombuffer(blob[2:2 + k * dt.itemsize], dtype=dt)
            a = book[np.frombuffer(blob[2 + k * dt.itemsize:], np.uint8, count=n)]
        elif e["enc"] == "packed":
            a = _read_book(blob, dt, n)
        elif e["enc"] == "sparse":
            nb = (n + 7) // 8
            mask = np.unpackbits(np.frombuffer(blob[:nb], np.uint8), count=n).astype(bool)
            a = np.zeros(n, dt)
            a[mask] = _read_book(blob[nb:], dt, int(mask.sum()))
        elif e["enc"] in ("gaps", "gaps_book"):
            try:
                pos, off = _read_gaps(blob, n)
            except (ValueError, struct.error):
                raise LoadError(f"{p} is corrupt ({e['name']}: bad gap stream)") from None
            a = np.zeros(n, dt)
            if e["enc"] == "gaps":
                a[pos] = np.frombuffer(blob[off:], dtype=dt, count=pos.size)
            else:
                a[pos] = _read_book(blob[off:], dt, pos.size)
        else:
            raise LoadError(f"{p}: unknown encoding {e['enc']!r}")
        state[e["name"]] = torch.from_numpy(np.ascontiguousarray(a).reshape(shape))
    if model is None:
        return state
    model.load_state_dict(state, strict=True)
    return model

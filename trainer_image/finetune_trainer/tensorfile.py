"""A safetensors file built in one host buffer, straight from the tensors.

The snapshot copies each tensor into its place in the file's bytes (one copy, made by
torch, which lets go of the GIL while it copies), so the upload process has nothing left
to serialise: it hashes and sends the buffer. The bytes are the safetensors format
(https://huggingface.co/docs/safetensors): an 8-byte little-endian header length, a
JSON header padded with spaces to a multiple of 8, then the tensors' data, contiguous
and in the header's order; `safetensors.torch.load` reads it back.
"""

from __future__ import annotations

import json
import struct
import sys
from dataclasses import dataclass

import torch

DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


@dataclass
class Layout:
    """Where each tensor's bytes go in a safetensors file, decided before any is copied,
    so the file's size is known and its memory can be allocated where the caller wants."""

    header: bytes
    spans: list[tuple[torch.Tensor, int, int]]  # tensor, start, end of its data

    @property
    def size(self) -> int:
        return len(self.header) + (self.spans[-1][2] if self.spans else 0)

    def write(self, into: memoryview) -> None:
        """Copy the header and every tensor into `into` (writable, exactly `size` bytes):
        a copy, so training may change the tensors once this returns."""
        buf = torch.frombuffer(into, dtype=torch.uint8)
        head = len(self.header)
        buf[:head].copy_(torch.frombuffer(bytearray(self.header), dtype=torch.uint8))
        for t, begin, end in self.spans:
            if end > begin:
                buf[head + begin : head + end].copy_(t.detach().reshape(-1).view(torch.uint8))


def layout(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Layout:
    """The safetensors file of `tensors` (and string `metadata`), laid out."""
    if sys.byteorder != "little":  # the format is little-endian; torch copies raw bytes
        raise RuntimeError("checkpoints are written on little-endian hosts only")
    # Widest elements first, as safetensors orders them: each tensor's data then
    # starts at a multiple of its element size.
    names = sorted(tensors, key=lambda n: (-tensors[n].element_size(), n))
    header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    spans: list[tuple[torch.Tensor, int, int]] = []
    offset = 0
    for name in names:
        t = tensors[name]
        if t.dtype not in DTYPES:
            raise TypeError(f"{name}: no safetensors type for {t.dtype}")
        end = offset + t.numel() * t.element_size()
        header[name] = {
            "dtype": DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, end],
        }
        spans.append((t, offset, end))
        offset = end
    text = json.dumps(header, separators=(",", ":")).encode()
    text = struct.pack("<Q", len(text) + -len(text) % 8) + text + b" " * (-len(text) % 8)
    return Layout(text, spans)

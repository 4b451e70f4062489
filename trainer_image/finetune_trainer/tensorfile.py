"""A safetensors file built in one host buffer, straight from the tensors.

The snapshot copies each tensor into its place in the file's bytes (one copy, made by
torch, which lets go of the GIL while it copies), so the upload thread has nothing left
to serialise: it hashes and sends the buffer. The bytes are the safetensors format
(https://huggingface.co/docs/safetensors): an 8-byte little-endian header length, a
JSON header padded with spaces to a multiple of 8, then the tensors' data, contiguous
and in the header's order; `safetensors.torch.load` reads it back.
"""

from __future__ import annotations

import json
import struct
import sys

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


def image(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> memoryview:
    """The safetensors file of `tensors` (and string `metadata`) as bytes in host
    memory: a copy, so training may change the tensors once this returns."""
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
    buf = torch.empty(len(text) + offset, dtype=torch.uint8)
    buf[: len(text)].copy_(torch.frombuffer(bytearray(text), dtype=torch.uint8))
    for t, begin, end in spans:
        if end > begin:
            data = t.detach().reshape(-1).view(torch.uint8)
            buf[len(text) + begin : len(text) + end].copy_(data)
    return memoryview(buf.numpy().data)

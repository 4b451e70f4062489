"""Streaming training data: plan, shard, read, resume.

Files are cut into *units* (byte ranges of plain text files, row ranges inside
one parquet row group or Arrow record batch, a compressed file whole). Each epoch
the units are shuffled with the seed and dealt to the ranks, balanced by example
count; a rank reads several units at once in shuffled blocks and saves its exact
position with each checkpoint (stream.py). Formats: text.py (JSON lines, CSV,
TSV, compressed or not), columnar.py (parquet, Arrow), saved.py (save_to_disk
folders); source.py picks the files of each split and the reader of each file.
"""

from .columnar import COLUMNAR_MEMORY
from .source import Source, file_format
from .stream import (
    BLOCK,
    SLOTS,
    count_units,
    epoch_assignment,
    held_out,
    rank_examples,
    step_allocations,
    stream,
)
from .text import MARGIN
from .units import DataIndex, Example, Position, Slot, Unit

__all__ = [
    "BLOCK",
    "COLUMNAR_MEMORY",
    "MARGIN",
    "SLOTS",
    "DataIndex",
    "Example",
    "Position",
    "Slot",
    "Source",
    "Unit",
    "count_units",
    "epoch_assignment",
    "file_format",
    "held_out",
    "rank_examples",
    "step_allocations",
    "stream",
]

"""Data: readers, formats, chat templates, tokenization (masking, packing) and splits."""

from tunelab.data.dataset import SFTData, build_sft, describe, load_records
from tunelab.data.formats import detect_format, normalise
from tunelab.data.readers import Record, read_records
from tunelab.data.tokenize import Collator, pack, tokenize_messages

__all__ = [
           "Collator",
           "Record",
           "SFTData",
           "build_sft",
           "describe",
           "detect_format",
           "load_records",
           "normalise",
           "pack",
           "read_records",
           "tokenize_messages",
]

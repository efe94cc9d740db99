"""Data: readers, formats, chat templates, tokenization (masking, packing) and splits."""

from tunelab.data.dataset import SFTData, build_sft, describe, load_records
from tunelab.data.formats import detect_format, normalise
from tunelab.data.readers import Record, read_records
from tunelab.data.tokenize import Collator, pack, tokenize_messages

__all__ = ["SFTData", "build_sft", "describe", "load_records", "detect_format", "normalise", "Record",
           "read_records", "Collator", "pack", "tokenize_messages"]

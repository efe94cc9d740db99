"""Raw text for continued pretraining: documents -> tokens -> fixed-length blocks.

Documents come from .txt files (each file is one document), or from the `text` field of
JSONL/JSON/CSV/Parquet records (rename another field with data.columns). A folder reads
every such file in it, in name order. Documents are joined with EOS between them, so the
model learns where one ends, and cut into blocks of `block_size` tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunelab.config import DataConfig
from tunelab.data.dataset import load_records
from tunelab.data.readers import FORMATS, BadRecord
from tunelab.errors import DataError


@dataclass
class PretrainData:
    train: list[dict]
    validation: list[dict]
    stats: dict


def build_pretrain(cfg: DataConfig, tokenizer, block_size: int) -> PretrainData:
    """Read, hold out, tokenize and block the text.

    Validation is data.validation when given; else the last `data.val_split` of the
    text: of its lines when there is one document, of its documents when there are
    several (the tail, not a random sample: neighbouring lines of one text would leak).
    """
    if not cfg.train:
        raise DataError("data.train: no text given; objective pt needs .txt files, a folder of them, or records "
                        "with a text field")
    docs = read_documents(cfg.train, cfg)
    if cfg.validation:
        held = read_documents(cfg.validation, cfg)
    else:
        docs, held = split_tail(docs, cfg.val_split)
    train = blocks(docs, tokenizer, block_size)
    if not train:
        raise DataError(f"{cfg.train}: fewer than data.max_length={block_size} tokens of text; lower data.max_length")
    # Equal-length blocks make the trainer's mean loss the exact per-token mean; a text
    # shorter than one block is still evaluated as one shorter block.
    validation = blocks(held, tokenizer, block_size) or blocks(held, tokenizer, block_size, keep_last=True)
    stats = {"format": "text", "documents": len(docs), "block_size": block_size,
             "train": {"examples": len(train), "tokens": sum(len(b["input_ids"]) for b in train)},
             "validation": {"examples": len(validation), "tokens": sum(len(b["input_ids"]) for b in validation)},
             "bad_records": 0}
    return PretrainData(train, validation, stats)


def read_documents(path: str, cfg: DataConfig) -> list[str]:
    """Every document in a file or a folder of files."""
    p = Path(path)
    files = sorted(f for f in p.iterdir() if f.suffix.lower() in FORMATS) if p.is_dir() else [p]
    if not files:
        raise DataError(f"{p}: no text files in this folder (looked for {', '.join(sorted(FORMATS))})")
    docs = []
    for f in files:
        try:
            docs += [r["text"] for r in load_records(str(f), cfg, "text").records]
        except BadRecord as e:
            raise DataError(f"{e}; objective pt reads raw text: .txt files, or records with a 'text' field "
                            "(rename yours with data.columns, e.g. {content: text})") from None
    return [d for d in docs if d.strip()]


def split_tail(docs: list[str], fraction: float) -> tuple[list[str], list[str]]:
    """(train, held-out): the last `fraction` of the lines of a single document, or of the documents."""
    if fraction <= 0:
        return docs, []
    if len(docs) == 1:
        lines = docs[0].splitlines(keepends=True)
        cut = len(lines) - max(1, round(len(lines) * fraction))
        return ["".join(lines[:cut])], ["".join(lines[cut:])]
    cut = len(docs) - max(1, round(len(docs) * fraction))
    return docs[:cut], docs[cut:]


def blocks(docs: list[str], tokenizer, block_size: int, keep_last: bool = False) -> list[dict]:
    """Documents joined with EOS, cut into `block_size`-token rows (every token is learned).
    The last, shorter block is kept only with `keep_last`."""
    ids: list[int] = []
    for doc in docs:
        ids += tokenizer(doc, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    out = [ids[i:i + block_size] for i in range(0, len(ids), block_size)]
    if out and len(out[-1]) < block_size and not (keep_last and len(out[-1]) > 1):
        out.pop()
    return [{"input_ids": b, "labels": list(b)} for b in out]

"""Tokenizers for a corpus: a new byte-level BPE trained on it, or a model's own extended with domain tokens.

`train`: byte-level BPE (GPT-2's scheme: no unknown token, any byte sequence encodes) through Hugging
Face `tokenizers`, with ChatML special tokens and chat template, saved as a transformers folder.
`extend`: new tokens added to a model's tokenizer and its embeddings resized; each new row starts as
the mean of the rows of the sub-tokens the text used to split into (Hewitt 2021, "Initializing new
word embeddings"), so the model reads a new token as it read its pieces. Both report tokens per word
on the corpus against the model's own tokenizer: fewer tokens per word is longer context and faster
training on that text.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from tunelab.config.options import Options, opt
from tunelab.errors import ConfigError, DataError

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
          "{% endif %}")


class TokenizerConfig(Options):
    """A new byte-level BPE tokenizer for a corpus."""

    vocab: int = opt(16_000, "vocabulary size, special tokens included", ge=300, flags=("--vocab-size",))
    min_frequency: int = opt(2, "fewest occurrences of a pair for it to merge", ge=1)
    special_tokens: list[str] = opt(SPECIALS, "special tokens (the first ends a text; ChatML's mark turns)", sep=",")
    compare_with: str | None = opt(None, "the model whose tokenizer the report compares with; default the default "
                                   "model")


def corpus_texts(paths: list[str | Path]) -> Iterator[str]:
    """Texts of .txt files (a paragraph each) and of record files (every text field of a record)."""
    from tunelab.data.curate.fields import all_text
    from tunelab.data.readers import read_records

    for path in map(Path, paths):
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if file.suffix == ".txt":
                for paragraph in file.read_text(encoding="utf-8", errors="replace").split("\n\n"):
                    if paragraph.strip():
                        yield paragraph
            else:
                for record in read_records(file):
                    yield all_text(record.data)


def tokens_per_word(tokenizer, texts: list[str]) -> float:
    words = sum(len(t.split()) for t in texts)
    tokens = sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    return round(tokens / max(words, 1), 4)


def _model_tokenizer(name: str | None):
    from tunelab.config.run import DEFAULT_MODEL
    from tunelab.models import load_tokenizer, resolve

    return load_tokenizer(resolve(name or DEFAULT_MODEL))


def _save_atomically(save, output: Path, force: bool) -> None:
    """`save(folder)` into a temporary folder renamed to `output` once complete."""
    if output.exists() and not force:
        raise ConfigError(f"{output}: already exists; choose another --output or add --force to replace it")
    staging = output.with_name(output.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    save(staging)
    if output.exists():
        shutil.rmtree(output)
    os.replace(staging, output)


def train(corpus: list[str | Path], output: str | Path, cfg: TokenizerConfig, force: bool = False) -> dict:
    """Train a byte-level BPE tokenizer on `corpus` and save it (with a ChatML template) to `output`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = list(corpus_texts(corpus))
    if not texts:
        raise DataError(f"{', '.join(map(str, corpus))}: no text to train a tokenizer on")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=cfg.vocab, min_frequency=cfg.min_frequency,
                                  special_tokens=cfg.special_tokens,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    end = cfg.special_tokens[0]
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=end, eos_token=end, pad_token=end,
                                   unk_token=None, additional_special_tokens=cfg.special_tokens[1:])
    if "<|im_start|>" in cfg.special_tokens and "<|im_end|>" in cfg.special_tokens:
        fast.chat_template = CHATML
    output = Path(output)
    _save_atomically(fast.save_pretrained, output, force)
    own = _model_tokenizer(cfg.compare_with)
    sample = texts[:5000]
    return {"output": str(output), "vocab": len(fast), "texts": len(texts),
            "tokens_per_word": tokens_per_word(fast, sample),
            "model_tokens_per_word": tokens_per_word(own, sample),
            "compared_with": cfg.compare_with or "the default model"}


def extend(model: str, add_tokens: str | Path, output: str | Path, corpus: list[str | Path] | None = None,
           force: bool = False) -> dict:
    """Add the tokens listed in `add_tokens` (one per line) to `model`; new embedding rows start as the
    mean of their old sub-token rows. Saves model and tokenizer to `output`."""
    import torch
    from transformers import AutoModelForCausalLM

    from tunelab.models import load_tokenizer, resolve

    try:
        wanted = [line.strip() for line in Path(add_tokens).read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as e:
        raise DataError(f"{add_tokens}: cannot read the tokens to add ({e.strerror})") from None
    folder = resolve(model)
    tokenizer = load_tokenizer(folder)
    texts = list(corpus_texts(corpus))[:5000] if corpus else []
    before = tokens_per_word(tokenizer, texts) if texts else None
    vocab = tokenizer.get_vocab()
    pieces = {t: tokenizer(t, add_special_tokens=False)["input_ids"] for t in dict.fromkeys(wanted)}
    new = [t for t, ids in pieces.items() if len(ids) > 1 and t not in vocab]
    if not new:
        raise DataError(f"{add_tokens}: every token listed is already one token of {model}; nothing to add")
    lm = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer.add_tokens(new)
    old_rows = lm.get_input_embeddings().weight.shape[0]
    lm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        matrices = [lm.get_input_embeddings().weight]
        head = lm.get_output_embeddings()
        if head is not None and head.weight.data_ptr() != matrices[0].data_ptr():
            matrices.append(head.weight)  # untied: the output rows start the same way
        for token in new:
            row = tokenizer.convert_tokens_to_ids(token)
            for weight in matrices:
                weight[row] = weight[pieces[token]].mean(dim=0)

    def save(staging: Path) -> None:
        lm.save_pretrained(staging)
        tokenizer.save_pretrained(staging)

    _save_atomically(save, Path(output), force)
    return {"output": str(output), "added": len(new), "already_single_tokens": len(wanted) - len(new),
            "vocab": len(tokenizer), "embedding_rows": f"{old_rows} -> {len(tokenizer)}",
            **({"tokens_per_word_before": before, "tokens_per_word_after": tokens_per_word(tokenizer, texts)}
               if texts else {})}

"""Clean records: repair text, mask personal data, and drop records that fail quality rules.

Text repair is ftfy's (mojibake, broken escapes, Unicode NFC), then control characters
removed, whitespace tidied and boilerplate lines dropped. Quality rules follow Gopher (Rae et
al. 2021, appendix A: word counts, mean word length, symbol and alphabetic-word ratios, stop
words, repeated lines and n-grams) and C4 (Raffel et al. 2020: lorem ipsum, curly brackets,
sentences per page); `preset` picks a set, any option set explicitly overrides it. The rules
read the answer fields of chat and instruction records (`fields.answers`); a record is kept
or dropped whole, and each drop names its rule.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any, Literal

from tunelab.config.options import Options, opt
from tunelab.data.curate.fields import answers, map_strings

STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})  # Gopher's list
BOILERPLATE = [r"\bcookie(s| policy)\b", r"\bjavascript\b", r"\ball rights reserved\b", r"\bterms of (use|service)\b",
               r"\bprivacy policy\b", r"\bsubscribe to (our|the) newsletter\b", r"\bclick here\b",
               r"^\s*(share|tweet|follow us)\b[^.!?]*$", r"^\s*(home|menu|login|sign in)\s*[|·>]"]

# Gopher's thresholds for documents; `default` keeps them but judges texts of any length.
PRESETS: dict[str, dict[str, Any]] = {
    "none": {},
    "default": {"min_words": 1, "min_mean_word_length": 2.0, "max_mean_word_length": 12.0, "max_symbol_ratio": 0.1,
                "min_alpha_words": 0.7, "min_stop_words": 2, "max_duplicate_lines": 0.3, "max_top_ngram": 0.2,
                "max_duplicate_ngrams": 0.2},
    "gopher": {"min_words": 50, "max_words": 100_000, "min_mean_word_length": 3.0, "max_mean_word_length": 10.0,
               "max_symbol_ratio": 0.1, "min_alpha_words": 0.8, "min_stop_words": 2, "max_duplicate_lines": 0.3,
               "max_top_ngram": 0.2, "max_duplicate_ngrams": 0.15},
    "c4": {"min_words": 1, "min_sentences": 3, "c4_page_rules": True},
}


class CleanConfig(Options):
    """How `tunelab data clean` repairs text and which quality rules drop a record (unset: the preset's)."""

    preset: Literal[tuple(PRESETS)] = opt("default", "rule set: default (Gopher's rules for texts of any length), "
                                          "gopher (documents of 50+ words), c4, none (repair only)")
    fix_text: bool = opt(True, "repair mojibake and Unicode (ftfy), remove control characters, tidy whitespace")
    boilerplate: bool = opt(True, "drop lines that are site boilerplate (cookies, terms of use, newsletter, ...)")
    pii: bool = opt(False, "mask e-mail addresses, phone numbers, IP addresses and card numbers")
    min_words: int | None = opt(None, "fewest words an answer may have", ge=0)
    max_words: int | None = opt(None, "most words an answer may have", ge=1)
    min_tokens: int | None = opt(None, "fewest tokens (of `tokenizer`)", ge=0)
    max_tokens: int | None = opt(None, "most tokens (of `tokenizer`)", ge=1)
    tokenizer: str | None = opt(None, "the model whose tokenizer counts tokens; default the default model")
    min_mean_word_length: float | None = opt(None, "shortest mean word length, in characters", ge=0)
    max_mean_word_length: float | None = opt(None, "longest mean word length (gibberish, URLs, base64)", gt=0)
    max_symbol_ratio: float | None = opt(None, "most '#' and '...' per word", ge=0)
    max_digit_ratio: float | None = opt(None, "most digits per character", ge=0, le=1)
    min_alpha_words: float | None = opt(None, "least share of words holding a letter", ge=0, le=1)
    min_stop_words: int | None = opt(None, "fewest English stop words (the, be, to, of, and, that, have, with) in a "
                                     "text of 20 words or more", ge=0)
    max_duplicate_lines: float | None = opt(None, "most share of lines that repeat an earlier line", ge=0, le=1)
    max_top_ngram: float | None = opt(None, "most share of characters in the most frequent 2-gram (3-, 4-gram: "
                                      "0.02 and 0.04 less, as Gopher)", ge=0, le=1)
    max_duplicate_ngrams: float | None = opt(None, "most share of characters in repeated 5-grams (6- to 10-gram: "
                                             "0.01 less each, as Gopher)", ge=0, le=1)
    min_sentences: int | None = opt(None, "fewest sentences (C4 drops pages under 3)", ge=0)
    c4_page_rules: bool | None = opt(None, "C4's page rules: drop 'lorem ipsum' and '{' pages")
    languages: list[str] = opt([], "keep only these languages (ISO 639-1 codes, langid.py's packaged model); "
                               "empty keeps all", sep=",")
    min_language_score: float = opt(0.5, "least probability of a kept language", ge=0, le=1)

    def rules(self) -> dict[str, Any]:
        """The preset's thresholds with every option given here over them."""
        given = {k: v for k, v in self.model_dump().items() if v is not None and k in _THRESHOLDS}
        return {**PRESETS[self.preset], **given}


_THRESHOLDS = ("min_words", "max_words", "min_tokens", "max_tokens", "min_mean_word_length", "max_mean_word_length",
               "max_symbol_ratio", "max_digit_ratio", "min_alpha_words", "min_stop_words", "max_duplicate_lines",
               "max_top_ngram", "max_duplicate_ngrams", "min_sentences", "c4_page_rules")


# ---------------------------------------------------------------- repair and masking

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\ufeff]")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u3000]+")


def repair(text: str) -> str:
    """ftfy's repairs, NFC, no control characters, single spaces, no trailing spaces, at most one blank line."""
    import ftfy

    text = unicodedata.normalize("NFC", ftfy.fix_text(text))
    text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


@cache
def _boilerplate() -> re.Pattern:
    return re.compile("|".join(f"(?:{p})" for p in BOILERPLATE), re.IGNORECASE)


def drop_boilerplate(text: str) -> str:
    return "\n".join(line for line in text.split("\n") if not _boilerplate().search(line)).strip()


PII = [  # (what it is, pattern, the mask); cards are Luhn-checked so order numbers stay
    ("EMAIL", re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[a-zA-Z]{2,}\b"), "<EMAIL>"),
    ("IP", re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b"), "<IP>"),
    ("IP", re.compile(r"\b(?:[0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}\b"), "<IP>"),
    ("CARD", re.compile(r"\b(?:\d[ -]?){12,18}\d\b"), "<CARD>"),
    ("PHONE", re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}[ .-]?\d{3,4}\b"),
     "<PHONE>"),
]


def _luhn(digits: str) -> bool:
    total, parity = 0, len(digits) % 2
    for i, ch in enumerate(digits):
        d = int(ch)
        if i % 2 == parity:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def mask_pii(text: str) -> str:
    """E-mail addresses, IP addresses, card numbers (Luhn-valid) and phone numbers replaced by a tag."""
    kept: list[str] = []  # long digit runs that are not cards (order numbers): hidden from the phone pattern

    def card(match: re.Match) -> str:
        if _luhn(re.sub(r"\D", "", match.group())):
            return "<CARD>"
        kept.append(match.group())
        return f"\x00{len(kept) - 1}\x00"

    for kind, pattern, tag in PII:
        text = pattern.sub(card, text) if kind == "CARD" else pattern.sub(tag, text)
    return re.sub("\x00(\\d+)\x00", lambda m: kept[int(m.group(1))], text)


# ---------------------------------------------------------------- quality rules


def _words(text: str) -> list[str]:
    return text.split()


def _ngram_share(words: list[str], n: int, top: bool) -> float:
    """Gopher: the share of characters in the most frequent n-gram (top), or in n-grams seen before."""
    if len(words) < n:
        return 0.0
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    total = sum(len(w) for w in words) or 1
    if top:
        gram, count = Counter(grams).most_common(1)[0]
        return sum(len(w) for w in gram) * count / total if count > 1 else 0.0
    seen, covered = set(), [False] * len(words)
    for i, gram in enumerate(grams):
        if gram in seen:
            covered[i:i + n] = [True] * n
        seen.add(gram)
    return sum(len(w) for w, c in zip(words, covered) if c) / total


def failed_rule(text: str, rules: dict[str, Any], count_tokens=None) -> str | None:
    """The first rule `text` breaks, or None."""
    words = _words(text)
    n = len(words)
    if not text.strip():
        return "empty"
    if rules.get("min_words") is not None and n < rules["min_words"]:
        return "min_words"
    if rules.get("max_words") is not None and n > rules["max_words"]:
        return "max_words"
    if count_tokens is not None and (rules.get("min_tokens") is not None or rules.get("max_tokens") is not None):
        tokens = count_tokens(text)
        if rules.get("min_tokens") is not None and tokens < rules["min_tokens"]:
            return "min_tokens"
        if rules.get("max_tokens") is not None and tokens > rules["max_tokens"]:
            return "max_tokens"
    mean = sum(len(w) for w in words) / max(n, 1)
    if rules.get("min_mean_word_length") is not None and mean < rules["min_mean_word_length"] and n >= 3:
        return "mean_word_length"
    if rules.get("max_mean_word_length") is not None and mean > rules["max_mean_word_length"]:
        return "mean_word_length"
    if rules.get("max_symbol_ratio") is not None and (text.count("#") + text.count("...") + text.count("…")) / \
            max(n, 1) > rules["max_symbol_ratio"]:
        return "symbol_ratio"
    if rules.get("max_digit_ratio") is not None and sum(c.isdigit() for c in text) / len(text) > \
            rules["max_digit_ratio"]:
        return "digit_ratio"
    if rules.get("min_alpha_words") is not None and n >= 3 and \
            sum(any(c.isalpha() for c in w) for w in words) / n < rules["min_alpha_words"]:
        return "alpha_words"
    if rules.get("min_stop_words") is not None and n >= 20 and \
            sum(w.lower().strip(".,;:!?\"'()") in STOP_WORDS for w in words) < rules["min_stop_words"]:
        return "stop_words"
    lines = [line for line in text.split("\n") if line.strip()]
    if rules.get("max_duplicate_lines") is not None and len(lines) > 1:
        if 1 - len(set(lines)) / len(lines) > rules["max_duplicate_lines"]:
            return "duplicate_lines"
    if rules.get("max_top_ngram") is not None:
        for i, size in enumerate((2, 3, 4)):
            if _ngram_share(words, size, top=True) > rules["max_top_ngram"] - 0.02 * i:
                return "top_ngram"
    if rules.get("max_duplicate_ngrams") is not None:
        for i, size in enumerate(range(5, 11)):
            if _ngram_share(words, size, top=False) > rules["max_duplicate_ngrams"] - 0.01 * i:
                return "duplicate_ngrams"
    if rules.get("c4_page_rules") and ("lorem ipsum" in text.lower() or "{" in text):
        return "c4_page"
    if rules.get("min_sentences") is not None and \
            len(re.findall(r"[.!?](?:\s|$)", text)) < rules["min_sentences"]:
        return "min_sentences"
    return None


@cache
def _language_identifier():
    from langid.langid import LanguageIdentifier, model

    return LanguageIdentifier.from_modelstring(model, norm_probs=True)


def language(text: str) -> tuple[str, float]:
    """(ISO 639-1 code, probability) from langid.py's packaged model."""
    code, score = _language_identifier().classify(text)
    return code, float(score)


# ---------------------------------------------------------------- one record


class Cleaner:
    """Cleans one record at a time (picklable: worker processes build their own)."""

    def __init__(self, cfg: CleanConfig):
        self.cfg = cfg
        self.rules = cfg.rules()
        self._count = None
        if self.rules.get("min_tokens") is not None or self.rules.get("max_tokens") is not None:
            from tunelab.config.run import DEFAULT_MODEL
            from tunelab.models import load_tokenizer, resolve

            tokenizer = load_tokenizer(resolve(cfg.tokenizer or DEFAULT_MODEL))
            self._count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])

    def __call__(self, data: dict) -> tuple[dict, str | None]:
        """(the record repaired, the rule it broke or None)."""
        if self.cfg.fix_text:
            data = map_strings(data, repair)
        if self.cfg.pii:
            data = map_strings(data, mask_pii)
        texts = answers(data)
        if self.cfg.boilerplate and texts:
            cleaned = {t: drop_boilerplate(t) for t in texts}
            data = map_strings(data, lambda s: cleaned.get(s, s))
            texts = [cleaned[t] for t in texts]
        if not texts or not any(t.strip() for t in texts):
            return data, "empty"
        for text in texts:
            rule = failed_rule(text, self.rules, self._count)
            if rule is not None:
                return data, rule
        if self.cfg.languages:
            code, score = language(" ".join(texts))
            if code not in self.cfg.languages or score < self.cfg.min_language_score:
                return data, "language"
        return data, None


# ---------------------------------------------------------------- a file


def clean_batch(cleaner: Cleaner, batch: list[tuple[dict, str]]) -> list[tuple[dict, str, str | None]]:
    """(the cleaned record, or the original one when it is dropped: the side file loses nothing; where; rule)."""
    out = []
    for original, where in batch:
        data, rule = cleaner(original)
        out.append(((data if rule is None else original), where, rule))
    return out


def clean_file(source: str | Path, out: str | Path, cfg: CleanConfig, workers: int = 1, force: bool = False) -> dict:
    """Clean `source` into `out` (JSON Lines), streamed; dropped records go to OUT.dropped.jsonl with their rule.

    workers: processes that clean records in parallel (order is kept). Returns the counts per rule.
    """
    from tunelab.data.curate.io import check_output, records
    from tunelab.data.curate.parallel import batched, ordered_map

    out = Path(out)
    check_output(out, [Path(source)], force)
    batches = ordered_map(clean_batch, batched(records(source), 64), workers, Cleaner, cfg)
    return write_cleaned(source, out, (row for batch in batches for row in batch))


def write_cleaned(source: str | Path, out: Path, rows: Iterable[tuple[dict, str, str | None]]) -> dict:
    """(record, where, rule) rows into OUT and OUT.dropped.jsonl; the summary of counts per rule."""
    from tunelab.data.curate.io import JsonlWriter, side_file

    counts: Counter = Counter()
    with JsonlWriter(out) as kept, JsonlWriter(side_file(out, "dropped")) as dropped:
        for data, where, rule in rows:
            counts[rule or "kept"] += 1
            if rule is None:
                kept.write(data)
            else:
                dropped.write({"rule": rule, "where": where, "record": data})
    return {"input": str(source), "output": str(out), "records": sum(counts.values()), "kept": counts.pop("kept", 0),
            "dropped": dict(counts.most_common())}

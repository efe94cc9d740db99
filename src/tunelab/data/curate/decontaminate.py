"""Training records that overlap evaluation data, found by shared word n-grams.

GPT-3 (Brown et al. 2020, appendix C) calls a training document contaminated when it shares
a 13-gram with an evaluation item. Here each text field of an item (its question, its passage,
its answer) is indexed on its own, so a training record quoting only the question is found;
a field shorter than 13 words is matched whole. Words are normalised (case, punctuation)
first, as `dedup.normalise` does, so a re-cased copy is found.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.config.options import Options, opt
from tunelab.data.curate.dedup import normalise
from tunelab.data.curate.fields import all_text, texts


class DecontaminateConfig(Options):
    """How `tunelab data decontaminate` decides that a training record overlaps an evaluation item."""

    ngram: int = opt(13, "words in the n-grams compared (GPT-3: 13)", ge=3)
    min_item_words: int = opt(8, "an evaluation field shorter than ngram words is matched whole when it has at least "
                              "this many words; shorter ones are skipped (too common to mean a copy)", ge=1)


def _grams(words: list[str], n: int) -> Iterable[str]:
    # the n-grams themselves are the keys: a str hash differs between processes, and workers share this index
    for i in range(len(words) - n + 1):
        yield " ".join(words[i:i + n])


@dataclass
class Contamination:
    """Which training records overlap which evaluation items."""

    hits: dict[int, set[str]] = field(default_factory=dict)  # training index -> evaluation items ("file:line")

    @property
    def items(self) -> dict[str, list[int]]:
        """Evaluation item -> the training records that overlap it."""
        out: dict[str, list[int]] = {}
        for train, found in sorted(self.hits.items()):
            for item in sorted(found):
                out.setdefault(item, []).append(train)
        return out


class Index:
    """The n-grams of evaluation items, each pointing at the items holding it."""

    def __init__(self, cfg: DecontaminateConfig):
        self.cfg = cfg
        self.grams: dict[str, set[str]] = {}  # n-gram -> items
        self.short: dict[int, dict[str, set[str]]] = {}  # a short item's length -> its words -> items
        self.items = 0

    def add(self, record: dict, item: str) -> None:
        self.items += 1
        for text in texts(record):  # field by field
            words = normalise(text).split()
            if len(words) >= self.cfg.ngram:
                for g in _grams(words, self.cfg.ngram):
                    self.grams.setdefault(g, set()).add(item)
            elif len(words) >= self.cfg.min_item_words:
                self.short.setdefault(len(words), {}).setdefault(" ".join(words), set()).add(item)

    def matches(self, text: str) -> set[str]:
        words = normalise(text).split()
        found: set[str] = set()
        for g in _grams(words, self.cfg.ngram):
            found |= self.grams.get(g, set())
        for size, table in self.short.items():
            for g in _grams(words, size):
                found |= table.get(g, set())
        return found


def index_of(evaluation: Iterable[tuple[dict, str]], cfg: DecontaminateConfig | None = None) -> Index:
    index = Index(cfg or DecontaminateConfig())
    for record, where in evaluation:
        index.add(record, where)
    return index


def find_contamination(train: Iterable[dict], evaluation: Iterable[tuple[dict, str]],
                       cfg: DecontaminateConfig | None = None) -> Contamination:
    """Training records (in order) sharing an n-gram with an evaluation item (record, "file:line")."""
    index = index_of(evaluation, cfg)
    result = Contamination()
    for i, record in enumerate(train):
        found = index.matches(all_text(record))
        if found:
            result.hits[i] = found
    return result


def match_batch(index: Index, batch: list[tuple[dict, str]]) -> list[tuple[dict, str, list[str]]]:
    return [(data, where, sorted(index.matches(all_text(data)))) for data, where in batch]


def decontaminate_file(train: str | Path, against: list[str | Path], out: str | Path,
                       cfg: DecontaminateConfig | None = None, force: bool = False, workers: int = 1) -> dict:
    """`train` without the records overlapping any file of `against`, into `out`; the removed ones, with the
    evaluation items they overlap, into OUT.removed.jsonl. Returns which items were contaminated, by which lines.

    The evaluation items are held as an n-gram index (evaluation sets are small); the training file is
    streamed through `workers` processes, each with a copy of the index."""
    from tunelab.data.curate.io import check_output, records
    from tunelab.data.curate.parallel import batched, given, ordered_map

    out = Path(out)
    check_output(out, [Path(train), *map(Path, against)], force)
    index = index_of((item for path in against for item in records(path)), cfg)
    matched = ordered_map(match_batch, batched(records(train), 64), workers, given, index)
    return write_decontaminated(train, out, (row for batch in matched for row in batch))


def write_decontaminated(train: str | Path, out: Path, rows: Iterable[tuple[dict, str, list[str]]]) -> dict:
    """(record, where, the items it overlaps) rows into OUT and OUT.removed.jsonl; the summary."""
    from tunelab.data.curate.io import JsonlWriter, side_file

    total, items = 0, {}
    with JsonlWriter(out) as kept, JsonlWriter(side_file(out, "removed")) as removed:
        for data, where, overlaps in rows:
            total += 1
            if overlaps:
                removed.write({"where": where, "overlaps": overlaps, "record": data})
                for item in overlaps:
                    items.setdefault(item, []).append(where)
            else:
                kept.write(data)
    return {"train": str(train), "records": total, "removed": removed.count, "kept": kept.count,
            "contaminated_items": dict(sorted(items.items())), "output": str(out)}


def overlap_warning(train: str | Path, test: str | Path, cfg: DecontaminateConfig | None = None) -> str | None:
    """A line for `tunelab compare` and `tunelab eval` when test items share an n-gram with training records."""
    found = find_contamination((data for data, _ in records_of(train)), records_of(test), cfg)
    items = found.items
    if not items:
        return None
    shown = ", ".join(list(items)[:3]) + (", ..." if len(items) > 3 else "")
    return (f"warning: {len(items)} test item(s) of {test} share a {(cfg or DecontaminateConfig()).ngram}-gram with "
            f"training records of {train} ({shown}); scores on them may reflect memorising. Remove them with: "
            f"tunelab data decontaminate {train} --against {test} --output CLEAN.jsonl")


def records_of(path: str | Path):
    from tunelab.data.curate.io import records

    return records(path)

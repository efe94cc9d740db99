"""Clean and dedup on real text with planted near-duplicates and planted junk, scored against the plant.

Clean text: WikiText-2 validation paragraphs (30+ words) and the distinct xquad_en contexts from
../shared/data. Planted, with a seed:
  - near-duplicates: copies of sampled paragraphs with a share of their words swapped, inserted,
    deleted or re-cased (2%, 5% and 10% of words);
  - junk: site boilerplate, gibberish (random letter strings) and paragraphs of one line repeated.
Figures:
  - dedup precision and recall: pairs inside the clusters found against the planted pairs;
  - junk removed / clean kept by `tunelab data clean`'s default rules;
  - dedup throughput against datasketch used plainly (a MinHash per record updated one shingle at a
    time, LSH insert and query), the same clusters found.

    python bench/curate.py [--quick] [--sweep]
"""

from __future__ import annotations

import argparse
import json
import random
import string
import sys
import time
from itertools import combinations
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import header, save  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RATES = (0.02, 0.05, 0.10)
BOILERPLATE = ["Home | About us | Contact | Login", "We use cookies to improve your experience. Cookie policy",
               "Subscribe to our newsletter", "Copyright 2024 Example Media. All rights reserved.",
               "Terms of use | Privacy policy", "Share on Facebook | Tweet", "Click here to read more"]


def detokenize(line: str) -> str:
    """WikiText's tokenised text back to prose (lm-evaluation-harness's wikitext detokenizer rules)."""
    import re

    for a, b in ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."), (" : ", ": "), (" ; ", "; "), (" . ", ". "),
                 (" ! ", "! "), (" ? ", "? "), (" , ", ", "), (" 's", "'s"), ("( ", "("), (" )", ")"),
                 (" 't", "'t"), (" n't", "n't"), (' " ', ' "')):
        line = line.replace(a, b)
    line = re.sub(r'" ([^"]*) "', r'"\1"', line)
    return re.sub(r" \.$", ".", line)


def clean_paragraphs(limit: int | None) -> list[str]:
    from tunelab.data.curate.dedup import normalise

    texts = []
    for line in (DATA / "wikitext2" / "valid.txt").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if len(line.split()) >= 30 and not line.startswith("="):
            texts.append(detokenize(line))
    seen = set()
    for line in (DATA / "xquad_en" / "dev.jsonl").read_text(encoding="utf-8").splitlines():
        context = json.loads(line)["context"]
        if context not in seen:
            seen.add(context)
            texts.append(context)
    unique, keys = [], set()
    for t in texts:  # the base itself holds no duplicates, so every found pair is planted or wrong
        if normalise(t) not in keys:
            keys.add(normalise(t))
            unique.append(t)
    return unique[:limit] if limit else unique


def edit(text: str, rate: float, vocab: list[str], rng: random.Random) -> str:
    words = text.split()
    for _ in range(max(1, round(rate * len(words)))):
        op, i = rng.choice(("swap", "insert", "delete", "recase")), rng.randrange(len(words) - 1)
        if op == "swap":
            words[i], words[i + 1] = words[i + 1], words[i]
        elif op == "insert":
            words.insert(i, rng.choice(vocab))
        elif op == "delete":
            del words[i]
        else:
            words[i] = words[i].upper() if rng.random() < 0.5 else words[i].title()
    return " ".join(words)


def junk(n: int, sentences: list[str], rng: random.Random) -> list[str]:
    out = []
    for k in range(n):
        kind = k % 3
        if kind == 0:
            out.append("\n".join(rng.sample(BOILERPLATE, 4)))
        elif kind == 1:
            out.append(" ".join("".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 9)))
                                for _ in range(rng.randint(30, 80))))
        else:
            out.append("\n".join([rng.choice(sentences)] * rng.randint(4, 10)))
    return out


def planted_set(base: list[str], copies_per_rate: int, junk_share: float, seed: int):
    rng = random.Random(seed)
    vocab = sorted({w for t in base[:500] for w in t.split() if w.isalpha()})
    records, truth = [{"text": t, "kind": "clean", "source": i} for i, t in enumerate(base)], set()
    originals = rng.sample(range(len(base)), copies_per_rate * len(RATES))
    for r, rate in enumerate(RATES):
        for i in originals[r * copies_per_rate:(r + 1) * copies_per_rate]:
            records.append({"text": edit(base[i], rate, vocab, rng), "kind": f"copy-{rate}", "source": i})
    sentences = [s.strip() + "." for t in base[:300] for s in t.split(". ") if len(s.split()) > 6]
    records += [{"text": t, "kind": "junk", "source": None} for t in junk(int(junk_share * len(base)), sentences, rng)]
    rng.shuffle(records)
    by_source: dict[int, list[int]] = {}
    for i, r in enumerate(records):
        if r["source"] is not None:
            by_source.setdefault(r["source"], []).append(i)
    for members in by_source.values():
        truth |= {tuple(sorted(p)) for p in combinations(members, 2)}
    return records, truth


def pairs(clusters: list[list[int]]) -> set[tuple[int, int]]:
    return {tuple(sorted(p)) for c in clusters for p in combinations(c, 2)}


def plain_datasketch(texts: list[str], cfg) -> list[list[int]]:
    """The library used as its README shows: one MinHash per record, one update per shingle."""
    from datasketch import MinHash, MinHashLSH

    from tunelab.data.curate.dedup import shingles

    lsh, hashes, parent = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm), [], list(range(len(texts)))

    def find(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i, text in enumerate(texts):
        h = MinHash(num_perm=cfg.num_perm, seed=cfg.seed)
        for s in shingles(text, cfg.ngram):
            h.update(s)
        for j in lsh.query(h):
            if h.jaccard(hashes[j]) >= cfg.threshold:
                parent[find(i)] = find(j)
        lsh.insert(i, h)
        hashes.append(h)
    members: dict[int, list[int]] = {}
    for i in range(len(texts)):
        members.setdefault(find(i), []).append(i)
    return [m for m in members.values() if len(m) > 1]


def score(records, truth, cfg, workers: int = 1) -> dict:
    from tunelab.data.curate.dedup import find_duplicates

    texts = [r["text"] for r in records if r["kind"] != "junk"]
    index = [i for i, r in enumerate(records) if r["kind"] != "junk"]
    found = find_duplicates(texts, cfg, workers=workers)
    predicted = {(index[a], index[b]) for a, b in pairs(found.clusters)}
    hit = predicted & truth
    per_rate = {}
    for rate in RATES:
        planted = {p for p in truth if any(records[i]["kind"] == f"copy-{rate}" for i in p)}
        per_rate[f"recall_{int(rate * 100)}pct"] = round(len(planted & predicted) / max(len(planted), 1), 4)
    return {"precision": round(len(hit) / max(len(predicted), 1), 4), "recall": round(len(hit) / max(len(truth), 1), 4),
            **per_rate, "texts": texts, "found": found}


def worker_scaling(texts: list[str], cfg, size: int, seed: int) -> tuple[float, float]:
    """Records/s of one process and of two worker processes on `size` records: the texts again and again,
    each copy with one word changed (so none is an exact copy). The workers' start (about 2 s) is included."""
    from tunelab.data.curate.dedup import find_duplicates

    rng = random.Random(seed)
    corpus = []
    while len(corpus) < size:
        words = texts[len(corpus) % len(texts)].split()
        words[rng.randrange(len(words))] = f"w{rng.randrange(10**6)}"
        corpus.append(" ".join(words))
    rates, clusters = [], []
    for workers in (1, 2):
        t0 = time.perf_counter()
        found = find_duplicates(corpus, cfg, workers=workers)
        rates.append(size / (time.perf_counter() - t0))
        clusters.append(found.clusters)
    assert clusters[0] == clusters[1], "two workers found other clusters than one process"
    return rates[0], rates[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fifth of the paragraphs")
    parser.add_argument("--sweep", action="store_true", help="precision and recall over shingle sizes and thresholds")
    parser.add_argument("--seed", type=int, default=0)
    args, _ = parser.parse_known_args()
    header()
    if not DATA.is_dir():
        sys.exit(f"{DATA} is missing: this benchmark reads WikiText-2 and xquad_en from the shared data folder")
    from tunelab.data.curate.clean import CleanConfig, Cleaner
    from tunelab.data.curate.dedup import DedupConfig

    base = clean_paragraphs(400 if args.quick else None)
    records, truth = planted_set(base, copies_per_rate=30 if args.quick else 100, junk_share=0.1, seed=args.seed)
    print(f"{len(base)} clean paragraphs, {len(records) - len(base)} planted ({len(truth)} duplicate pairs)")

    cleaner = Cleaner(CleanConfig())
    rules = [cleaner({"text": r["text"]})[1] for r in records]
    junk_idx = [i for i, r in enumerate(records) if r["kind"] == "junk"]
    clean_idx = [i for i, r in enumerate(records) if r["kind"] == "clean"]
    junk_removed = sum(rules[i] is not None for i in junk_idx) / len(junk_idx)
    clean_kept = sum(rules[i] is None for i in clean_idx) / len(clean_idx)
    dropped = {}
    for i in clean_idx:
        if rules[i] is not None:
            dropped[rules[i]] = dropped.get(rules[i], 0) + 1
    print(f"clean: junk removed {junk_removed:.3f}, clean kept {clean_kept:.3f} (clean dropped by rule: {dropped})")

    if args.sweep:
        for ngram in (1, 2, 3):
            for threshold in (0.5, 0.6, 0.7, 0.8):
                s = score(records, truth, DedupConfig(ngram=ngram, threshold=threshold))
                print(f"  ngram {ngram} threshold {threshold}: precision {s['precision']:.3f} recall {s['recall']:.3f} "
                      + " ".join(f"{k} {v:.3f}" for k, v in s.items() if k.startswith("recall_")))

    cfg = DedupConfig()
    import datasketch.lsh  # noqa: F401  imported (about 0.5 s, with scipy) before either side is timed

    t0 = time.perf_counter()
    s = score(records, truth, cfg)
    ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    plain = plain_datasketch(s["texts"], cfg)
    baseline = time.perf_counter() - t0
    same = sorted(map(sorted, plain)) == sorted(map(sorted, s["found"].clusters))
    n = len(s["texts"])
    one_rate, two_rate = worker_scaling(s["texts"], cfg, 25_000 if args.quick else 60_000, args.seed)
    print(f"dedup (ngram {cfg.ngram}, threshold {cfg.threshold}, {cfg.num_perm} permutations): precision "
          f"{s['precision']:.3f} recall {s['recall']:.3f} ("
          + ", ".join(f"{k} {v:.3f}" for k, v in s.items() if k.startswith("recall_")) + ")")
    print(f"throughput: {n / ours:,.0f} records/s against plain datasketch {n / baseline:,.0f} records/s "
          f"({baseline / ours:.2f}x; same clusters: {same})")
    print(f"a larger corpus (the texts again with a word changed, to {25_000 if args.quick else 60_000:,} records): "
          f"{one_rate:,.0f} records/s in one process, {two_rate:,.0f} with two worker processes "
          f"({two_rate / one_rate:.2f}x)")
    figures = {"dedup_precision": s["precision"], "dedup_recall": s["recall"],
               **{k: v for k, v in s.items() if k.startswith("recall_")}, "junk_removed": round(junk_removed, 4),
               "clean_kept": round(clean_kept, 4), "records_per_s": round(n / ours, 1),
               "plain_datasketch_records_per_s": round(n / baseline, 1),
               "vs_plain_datasketch": round(baseline / ours, 2), "scaled_records_per_s_1_process": round(one_rate, 1),
               "scaled_records_per_s_2_workers": round(two_rate, 1)}
    save("curate", figures, quick=args.quick)
    print(" ".join(f"{k}={figures[k]}" for k in ("dedup_precision", "dedup_recall", "junk_removed", "clean_kept",
                                                  "records_per_s", "vs_plain_datasketch")))


if __name__ == "__main__":
    main()

"""Making data better before it trains: clean (repair, filter, mask), deduplicate, decontaminate.

- `fields`: which text of a record each step reads (answers for quality, everything for overlap).
- `clean`: text repair, quality rules with the Gopher and C4 presets, language identification, PII masking.
- `dedup`: exact and near-duplicate (MinHash LSH) clusters across files, one record kept per cluster.
- `decontaminate`: training records sharing a long n-gram with evaluation items (GPT-3's 13-gram rule).
- `io`: reading several files as one stream, writing kept and dropped records atomically.
"""

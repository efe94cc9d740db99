"""clean, dedup and decontaminate on a Ray cluster, through Ray Data, for corpora beyond one machine.

    tunelab data dedup shards/*.jsonl -o out/ --ray auto         # the cluster this machine belongs to
    tunelab data clean in.jsonl out.jsonl --ray local --workers 2 # a Ray started here, two workers

Why Ray Data and not datatrove: Ray is already tunelab's engine for fanning work out to a
cluster (`tunelab compare --ray`), so one cluster and one extra serve both; Ray Data streams
blocks between stages with backpressure and spills to disk past memory; and its groupby is the
distributed shuffle that MinHash bucketing needs, so the steps here are the very functions the
local engine runs (`Cleaner`, `Signer`, `bucket_pairs`, `Index.matches`), not a second
implementation: both engines give the same files, byte for byte.

Files are read by Ray tasks with tunelab's own readers (same formats, same errors naming the
file and line). The heavy work runs on the cluster: cleaning, hashing, grouping by band key,
confirming candidates, matching n-grams. Clustering the confirmed pairs (a few per duplicate)
and writing the outputs, in input order, happen on the machine that runs the command.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from tunelab.errors import needs

BATCH = 256


@contextlib.contextmanager
def session(address: str, workers: int | None) -> Iterator[None]:
    """Ray connected: "local" starts one here for `workers` workers (and a CPU more, for reading and
    regrouping); otherwise an address or "auto".
    A Ray already started in this process is used as it is."""
    ray = needs("ray", "ray")
    started = not ray.is_initialized()
    saved = {k: os.environ.get(k) for k in ("RAY_BACKEND_LOG_LEVEL", "RAY_AUTH_TOKEN")}
    if started:
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")
        if address == "local" and not (os.environ.get("RAY_AUTH_MODE") or saved["RAY_AUTH_TOKEN"]):
            # a Ray started here turns token auth on and, with no token, writes one to ~/.ray/auth_token; a
            # later `ray start` cluster then refuses this user's connections. The token lives here instead.
            os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
        local = {"num_cpus": (workers or 1) + 1, "include_dashboard": False, "_node_ip_address": "127.0.0.1"}
        ray.init(**(local if address == "local" else {"address": address}), logging_level="ERROR",
                 log_to_driver=False)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # the outputs keep the input's order
    context.enable_progress_bars = False
    context.use_disk_based_hash_shuffle = True  # the groupby of a corpus larger than the object store spills
    quiet = logging.getLogger("ray.data")
    level, quiet.level = quiet.level, logging.ERROR  # not a line per stage on the command's output
    try:
        with warnings.catch_warnings():  # its count of inputs is taken before the records are spread out
            warnings.filterwarnings("ignore", message="The minimum number of concurrent actors")
            yield
    finally:
        quiet.setLevel(level)
        if started:
            ray.shutdown()
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def _actors(workers: int | None):
    """A pool of `workers` actors (None: as many as the cluster's CPUs allow), each building its state once,
    leaving a CPU to the tasks that read and regroup the records (actors holding every CPU would starve
    them: the run would hang)."""
    import ray

    cpus = int(ray.cluster_resources().get("CPU", 1))
    return ray.data.ActorPoolStrategy(size=max(1, min(workers or cpus, cpus - 1)))


def _partitions() -> int:
    """Shuffle partitions: a few per CPU of the cluster (Ray's default of 200 is for large ones)."""
    import ray

    return max(8, 4 * int(ray.cluster_resources().get("CPU", 1)))


def _objects(values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _read(batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    """Files -> their records, streamed in batches: id (source << 40 | position), source, where, record (JSON)."""
    from tunelab.data.curate.io import records
    from tunelab.data.curate.parallel import batched

    for source, path in zip(batch["source"], batch["path"]):
        position = 0
        for chunk in batched(records(path), BATCH):
            ids = (int(source) << 40) + position + np.arange(len(chunk), dtype=np.int64)
            position += len(chunk)
            yield {"id": ids, "source": np.full(len(chunk), int(source), dtype=np.int64),
                   "where": _objects([w for _, w in chunk]),
                   "record": _objects([json.dumps(d, ensure_ascii=False) for d, _ in chunk])}


def read(paths: list[Path]):
    import ray

    files = ray.data.from_items([{"source": k, "path": str(p)} for k, p in enumerate(paths)])
    # a file is read by one task; its records go out in blocks of BATCH, so that every worker gets some
    return files.map_batches(_read, batch_size=1).repartition(target_num_rows_per_block=BATCH)


def _rows(ds, *columns: str) -> Iterator[tuple]:
    for batch in ds.iter_batches(batch_size=1024, batch_format="numpy"):
        yield from zip(*(batch[c] for c in columns))


# ---------------------------------------------------------------- clean


class _Clean:
    def __init__(self, cfg):
        from tunelab.data.curate.clean import Cleaner

        self.cleaner = Cleaner(cfg)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from tunelab.data.curate.clean import clean_batch

        rows = clean_batch(self.cleaner, [(json.loads(r), w) for r, w in zip(batch["record"], batch["where"])])
        return {"where": batch["where"], "record": _objects([json.dumps(d, ensure_ascii=False) for d, _, _ in rows]),
                "rule": _objects([rule or "" for _, _, rule in rows])}


def clean(source: str | Path, out: str | Path, cfg, address: str, workers: int | None = None,
          force: bool = False) -> dict:
    """`clean_file` with the cleaning spread over Ray workers."""
    from tunelab.data.curate.clean import write_cleaned
    from tunelab.data.curate.io import check_output

    out = Path(out)
    check_output(out, [Path(source)], force)
    with session(address, workers):
        ds = read([Path(source)]).map_batches(_Clean, fn_constructor_args=(cfg,), compute=_actors(workers),
                                              batch_size=BATCH, batch_format="numpy")
        rows = ((json.loads(r), w, rule or None) for w, r, rule in _rows(ds, "where", "record", "rule"))
        return write_cleaned(source, out, rows)


# ---------------------------------------------------------------- dedup


class _Sign:
    def __init__(self, cfg):
        from tunelab.data.curate.dedup import Signer

        self.signer = Signer(cfg)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from tunelab.data.curate.fields import all_text

        out = self.signer([all_text(json.loads(r)) for r in batch["record"]])
        signed = {"id": batch["id"], "length": out["length"], "e0": out["exact"][:, 0], "e1": out["exact"][:, 1]}
        if "sig" in out:
            signed["sig"] = out["sig"]
            signed.update({f"b{k}": out["bands"][:, k] for k in range(out["bands"].shape[1])})
        return signed


def _by_band(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One row per (record, band): what the groupby on (band, key) buckets."""
    bands = sorted((c for c in batch if c.startswith("b")), key=lambda c: int(c[1:]))
    n = len(batch["id"])
    return {"band": np.repeat(np.arange(len(bands)), n), "key": np.concatenate([batch[b] for b in bands]),
            "id": np.tile(batch["id"], len(bands)), "length": np.tile(batch["length"], len(bands)),
            "sig": np.tile(batch["sig"], (len(bands), 1))}


def _pairs(a: list[int], b: list[int], lengths: dict[int, int]) -> dict[str, np.ndarray]:
    return {"a": np.array(a, dtype=np.int64), "b": np.array(b, dtype=np.int64),
            "la": np.array([lengths[i] for i in a], dtype=np.int64),
            "lb": np.array([lengths[i] for i in b], dtype=np.int64)}


def _exact_pairs(group: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    ids = np.sort(group["id"])
    lengths = dict(zip(group["id"].tolist(), group["length"].tolist()))
    return _pairs([int(ids[0])] * (len(ids) - 1), ids[1:].tolist(), lengths)


def _near_pairs(group: dict[str, np.ndarray], threshold: float) -> dict[str, np.ndarray]:
    from tunelab.data.curate.dedup import bucket_pairs

    order = np.argsort(group["id"], kind="stable")
    found = bucket_pairs(group["id"][order], np.asarray(group["sig"])[order], threshold) if len(order) > 1 else []
    lengths = dict(zip(group["id"].tolist(), group["length"].tolist()))
    return _pairs([a for a, _ in found], [b for _, b in found], lengths)


def dedup(sources: list[str | Path], output: str | Path, cfg, address: str, workers: int | None = None,
          force: bool = False) -> dict:
    """`dedup_files` with hashing, bucketing and confirming spread over Ray workers."""
    from tunelab.data.curate.dedup import Clusters, plan_outputs, write_deduplicated
    from tunelab.errors import ConfigError

    if cfg.semantic:
        raise ConfigError("semantic: the Ray engine finds exact and near duplicates; run the semantic check "
                          "without --ray (it compares embeddings on one machine)")
    sources, targets, clusters_path = plan_outputs(sources, output, force)
    with session(address, workers):
        signed = read(sources).map_batches(_Sign, fn_constructor_args=(cfg,), compute=_actors(workers),
                                           batch_size=BATCH, batch_format="numpy").materialize()
        found = Clusters()
        lengths: dict[int, int] = {}
        steps = []
        if cfg.exact:
            groups = signed.groupby(["e0", "e1"], num_partitions=_partitions())
            steps.append(("exact", groups.map_groups(_exact_pairs, batch_format="numpy")))
        if cfg.near:
            groups = signed.map_batches(_by_band, batch_format="numpy").groupby(["band", "key"],
                                                                             num_partitions=_partitions())
            steps.append(("near", groups.map_groups(_near_pairs, fn_args=(cfg.threshold,), batch_format="numpy")))
        for kind, pairs in steps:
            for a, b, la, lb in _rows(pairs, "a", "b", "la", "lb"):
                found.add(int(a), int(b), kind)
                lengths[int(a)], lengths[int(b)] = int(la), int(lb)
        records = signed.count()
        if cfg.keep == "longest":
            duplicates = found.result(lambda i: (i >> 40, -lengths[i], i), records)
        else:
            duplicates = found.result(lambda i: (i >> 40, i), records)
        rows = ((int(i), (json.loads(r), w, int(s))) for i, r, w, s in _rows(read(sources), "id", "record",
                                                                               "where", "source"))
        return write_deduplicated(rows, duplicates, targets, clusters_path)


# ---------------------------------------------------------------- decontaminate


class _Match:
    def __init__(self, index):
        self.index = index

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from tunelab.data.curate.decontaminate import match_batch

        rows = match_batch(self.index, [(json.loads(r), w) for r, w in zip(batch["record"], batch["where"])])
        return {"where": batch["where"], "record": batch["record"],
                "overlaps": _objects([json.dumps(overlaps) for _, _, overlaps in rows])}


def decontaminate(train: str | Path, against: list[str | Path], out: str | Path, cfg, address: str,
                  workers: int | None = None, force: bool = False) -> dict:
    """`decontaminate_file` with the matching spread over Ray workers, each holding the evaluation index."""
    from tunelab.data.curate.decontaminate import index_of, write_decontaminated
    from tunelab.data.curate.io import check_output, records

    out = Path(out)
    check_output(out, [Path(train), *map(Path, against)], force)
    index = index_of((item for path in against for item in records(path)), cfg)
    with session(address, workers):
        ds = read([Path(train)]).map_batches(_Match, fn_constructor_args=(index,), compute=_actors(workers),
                                             batch_size=BATCH, batch_format="numpy")
        rows = ((json.loads(r), w, json.loads(o)) for w, r, o in _rows(ds, "where", "record", "overlaps"))
        return write_decontaminated(train, out, rows)

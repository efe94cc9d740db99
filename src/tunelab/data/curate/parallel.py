"""Work on a stream of items in worker processes, results in input order, nothing held but what is in flight.

Each worker builds its own state once (a cleaner with its language model, an n-gram index),
so what crosses the process boundary is only the items and their results.
"""

from __future__ import annotations

import functools
import itertools
import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from tunelab.config.options import Options, opt

_state: Any = None


class ScaleConfig(Options):
    """How clean, dedup and decontaminate spread their work: worker processes here, or a Ray cluster."""

    workers: int | None = opt(None, "worker processes (default 1); with --ray, Ray workers (default: one per CPU of "
                              "the cluster, less one). The input is streamed either way: files larger than memory "
                              "pass", ge=1)
    ray: str | None = opt(None, "run on Ray Data: 'local' (a Ray started here), 'auto' or a cluster's address; the "
                          "same output files (pip install 'tunelab[ray]')")


def _start(factory: Callable, args: tuple) -> None:
    global _state
    _state = factory(*args)


def _apply(fn: Callable, item: Any) -> Any:
    return fn(_state, item)


def ordered_map(fn: Callable[[Any, Any], Any], items: Iterable, workers: int, factory: Callable,
                *args: Any) -> Iterator:
    """fn(state, item) for each item, in order; state = factory(*args), built once per process.

    fn and factory must be module-level functions (they are sent to spawned processes). With
    workers <= 1 it all runs here. The pool reads ahead only as far as its pipes hold, so a
    file larger than memory streams through.
    """
    if workers <= 1:
        state = factory(*args)
        yield from (fn(state, item) for item in items)
        return
    # spawn, not fork: a forked torch or tokenizers thread pool can deadlock in the child
    with multiprocessing.get_context("spawn").Pool(workers, initializer=_start, initargs=(factory, args)) as pool:
        yield from pool.imap(functools.partial(_apply, fn), items)


def given(state: Any) -> Any:
    """The factory of a state sent as it is (an index built once, here)."""
    return state


def batched(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch

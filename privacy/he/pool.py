"""Worker processes for the CPU-bound HE steps: ordered results from a bounded process pool,
and `sum_stored_contributions`, the server's chunk sums spread over processes.

SEAL holds the GIL, so threads would not help. Workers come from a fork server or spawn,
never a fork of the (possibly threaded) caller; a daemonic process, which may not start
processes, works in-process instead (`can_start_pool`).
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor

from .accumulator import sum_contributions
from .context import MAX_CONTRIBUTIONS, HEError
from .frame import n_chunks


def _pool_context() -> multiprocessing.context.BaseContext:
    # never fork: the caller may run threads (a web server, TenSEAL's pool)
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def can_start_pool(workers: int, tasks: int) -> bool:
    """Whether `tasks` tasks should go to a pool of `workers` processes."""
    # a daemonic process (e.g. a multiprocessing pool's worker) may not start processes
    return workers > 1 and tasks > 1 and not multiprocessing.current_process().daemon


def ordered_in_pool(
    fn: Callable[..., bytes],
    tasks: Iterator[tuple],
    workers: int,
    initializer: Callable[..., None] | None = None,
    initargs: tuple = (),
) -> Iterator[bytes]:
    """`fn(*task)` for each task in `workers` processes; results in task order. Tasks are
    drawn lazily, at most 2 x `workers` in flight, so memory stays bounded."""
    pool = ProcessPoolExecutor(
        max_workers=workers, mp_context=_pool_context(), initializer=initializer, initargs=initargs
    )
    pending: deque[Future[bytes]] = deque()

    def submit() -> None:
        task = next(tasks, None)
        if task is not None:
            pending.append(pool.submit(fn, *task))

    try:
        for _ in range(2 * workers):
            submit()
        while pending:
            result = pending.popleft().result()
            submit()
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def sum_stored_contributions(
    chunk_files: Sequence[Sequence[str | os.PathLike]],
    *,
    key_id: bytes,
    total_values: int,
    chunk_values: int,
    max_contributions: int = MAX_CONTRIBUTIONS,
    workers: int = 1,
) -> Iterator[bytes]:
    """`sum_contributions` of every chunk index, from files: `chunk_files[i]` names the
    stored contributions to chunk i. Yields the aggregate frames in index order.

    Chunks are independent, so `workers` > 1 sums them in that many processes, each
    reading its chunk's files itself (the frames never cross a pipe; only aggregates come
    back); SEAL holds the GIL, so threads would not help. Memory: one chunk's running sum
    and the chunk being added, per worker.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise HEError(f"workers must be an int >= 1, got {workers!r}")
    if len(chunk_files) != n_chunks(total_values, chunk_values):
        raise HEError(f"expected the files of {n_chunks(total_values, chunk_values)} chunks")
    layout = (key_id, total_values, chunk_values, max_contributions)
    tasks = ((tuple(map(os.fspath, files)), index, *layout) for index, files in enumerate(chunk_files))
    if can_start_pool(workers, len(chunk_files)):
        return ordered_in_pool(_sum_files, tasks, min(workers, len(chunk_files)))
    return (_sum_files(*task) for task in tasks)


def _sum_files(
    paths: tuple[str, ...],
    chunk_index: int,
    key_id: bytes,
    total_values: int,
    chunk_values: int,
    max_contributions: int,
) -> bytes:
    def frames() -> Iterator[bytes]:
        for path in paths:
            with open(path, "rb") as fh:
                yield fh.read()

    return sum_contributions(
        frames(),
        key_id=key_id,
        total_values=total_values,
        chunk_values=chunk_values,
        chunk_index=chunk_index,
        max_contributions=max_contributions,
    )

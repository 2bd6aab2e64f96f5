"""Running one function over many work items: here, one after another, or as Dask tasks on a cluster's workers.

The out-of-core stages cut their work into items whose inputs and outputs are files in the run
directory (sessions: a day in pass 1 and 3a, a user bucket in pass 3b; the item graph: a sessions
part, a pair bucket). A mapper calls ``fn(item, **shared)`` for every item and returns the (small)
results in item order. ``serial_map`` does it in this process; ``DaskMapper`` submits one Dask task
per item to the scheduler at an address (the workers must see the run directory), sends ``shared``
to every worker once, and logs progress as tasks finish. A task whose worker dies is run again by
Dask on another worker; an exception in a task is raised here, with its own type and message.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from typing import Any, Callable, Iterator, Protocol, Sequence

log = logging.getLogger(__name__)


class Mapper(Protocol):
    """Calls ``fn(item, **shared)`` for each item; returns the results in item order."""

    def __call__(self, fn: Callable[..., Any], items: Sequence[Any], **shared: Any) -> list[Any]: ...


def serial_map(fn: Callable[..., Any], items: Sequence[Any], **shared: Any) -> list[Any]:
    """Return ``[fn(item, **shared) for item in items]`` (this process, in order)."""
    return [fn(item, **shared) for item in items]


def task_name(fn: Callable[..., Any]) -> str:
    """Return the name Dask tasks of ``fn`` carry (the function's, through ``functools.partial``)."""
    return getattr(getattr(fn, "func", fn), "__name__", "task").replace("_", "-")


def in_dask_worker() -> bool:
    """Return whether this code runs inside a Dask worker."""
    from distributed import get_worker

    try:
        return get_worker() is not None
    except ValueError:
        return False


@contextlib.contextmanager
def dask_client(address: str) -> Iterator[Any]:
    """Yield a client of the scheduler at ``address`` (the worker's own when this runs inside a task)."""
    from distributed import Client, worker_client

    if in_dask_worker():  # a task that maps: leave its thread to the workers while it waits
        with worker_client() as client:
            yield client
    else:
        with Client(address, set_as_default=False) as client:
            yield client


class DaskMapper:
    """A mapper that runs every item as a Dask task on the workers of the scheduler at ``address``."""

    def __init__(self, address: str) -> None:
        self.address = address

    def __repr__(self) -> str:
        return f"DaskMapper({self.address!r})"

    def __call__(self, fn: Callable[..., Any], items: Sequence[Any], **shared: Any) -> list[Any]:
        """Return ``fn(item, **shared)`` of every item, computed on the workers, in item order."""
        from distributed import as_completed

        items = list(items)
        if not items:
            return []
        name, start = task_name(fn), time.perf_counter()
        with dask_client(self.address) as client:
            sent = {k: client.scatter(v, broadcast=True, hash=False) for k, v in shared.items()}
            keys = [f"{name}-{i}-{uuid.uuid4().hex[:8]}" for i in range(len(items))]
            futures = client.map(fn, items, key=keys, pure=False, **sent)
            for done, _ in enumerate(as_completed(futures, loop=client.loop), start=1):
                if done == len(futures) or done % max(1, len(futures) // 10) == 0:
                    log.info("%s: %d/%d tasks done on %s (%.1f s)", name, done, len(futures), self.address,
                             time.perf_counter() - start)
            return client.gather(futures)


def mapper_for(address: str | None) -> Mapper:
    """Return a DaskMapper of ``address``, or ``serial_map`` when there is none."""
    return DaskMapper(address) if address else serial_map

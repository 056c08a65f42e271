"""Thread helpers of the streaming paths: an ordered thread-pool map and a background producer."""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

__all__ = ["background", "ordered_map"]


def ordered_map(fn, items: Iterable[tuple[str, object]], workers: int, lookahead: int) -> Iterator[tuple[str, object]]:
    """``(key, fn(item))`` in the order of ``items``, computed by ``workers`` threads up to ``lookahead`` ahead;
    an exception raised by ``fn`` is yielded in place of its result. ``workers`` 0: in the caller's thread."""
    if workers == 0:
        for key, item in items:
            try:
                yield key, fn(item)
            except Exception as e:
                yield key, e
        return
    pending: deque = deque()
    with ThreadPoolExecutor(workers, thread_name_prefix="bt_monai-decode") as pool:
        try:
            for key, item in items:
                pending.append((key, pool.submit(fn, item)))
                if len(pending) > lookahead:
                    yield _result(*pending.popleft())
            while pending:
                yield _result(*pending.popleft())
        finally:
            for _, future in pending:  # the consumer stopped early: drop what was not started
                future.cancel()


def _result(key: str, future) -> tuple[str, object]:
    try:
        return key, future.result()
    except Exception as e:
        return key, e


_DONE = object()


def background(items: Iterable, depth: int) -> Iterator:
    """The items of ``items``, produced by a background thread at most ``depth`` ahead of the consumer.

    An exception raised by the iterable itself is re-raised in the consumer; a consumer that stops early stops
    the producer at its next item.
    """
    buffer: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item) -> bool:
        # never blocks for good: a consumer that stopped early takes nothing more
        while not stop.is_set():
            try:
                buffer.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as e:  # handed over to the consumer
            put(_Raised(e))

    thread = threading.Thread(target=produce, name="bt_monai-arrays", daemon=True)
    thread.start()
    try:
        while True:
            item = buffer.get()
            if item is _DONE:
                return
            if isinstance(item, _Raised):
                raise item.error
            yield item
    finally:
        stop.set()


@dataclass
class _Raised:
    error: BaseException

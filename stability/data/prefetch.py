"""The next batches made while the current step runs: a background thread that takes the loader's
items and turns them into device batches (GPU JPEG decoding, crops, the policy) ``depth`` batches
ahead, on its own CUDA stream so their kernels overlap the training step's.

Why a thread and a side stream: the decoder's work per batch is partly host work (reading the
workers' buffers, launching ~10 kernels per op group) and partly device work; on the training
stream both sat between two steps (measured on an H200: the loader alone 4,425 img/s, the
decoder alone 7,096, loader + step 0.48-0.58 of the step alone; benchmarks/RESULTS.md). The
thread draws nothing from torch's global generator (every per-image draw uses its own
``torch.Generator``), so the training thread's seeded draws (MixUp/CutMix) are not disturbed,
and a batch is the same bytes with or without the overlap.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

_DONE = object()


def _put(q: queue.Queue, stop: threading.Event, value: Any) -> bool:
    """Hand ``value`` over unless closed (a full queue is waited on, the stop flag checked)."""
    while not stop.is_set():
        try:
            q.put(value, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _work(source: Iterator, fn: Callable[..., tuple], stream: Any, q: queue.Queue, stop: threading.Event) -> None:
    """The thread: each item made into a batch (on ``stream`` when given, with an event after it)."""
    try:
        for item in source:
            if stop.is_set():
                return
            if stream is None:
                batch, event = fn(*item), None
            else:
                with torch.cuda.stream(stream):
                    batch = fn(*item)
                    event = torch.cuda.Event()
                    event.record(stream)
            if not _put(q, stop, (batch, event)):
                return
        _put(q, stop, _DONE)
    except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
        _put(q, stop, e)


class Prefetcher:
    """Iterate ``fn(*item)`` for the items of ``source``, made ``depth`` ahead in a thread.

    Args:
        source: the loader's items (tuples of ``fn``'s arguments).
        fn: item -> batch (a tuple of tensors on ``device``).
        device: where the batches are made; on CUDA ``fn`` runs on a side stream and each batch
            is handed over after an event, with its tensors marked used by the consumer's stream.
        depth: batches made ahead (each holds device memory).

    An exception in ``source`` or ``fn`` is raised by ``next()`` in the consumer, in order.
    ``close()`` (also on ``del``) stops the thread and waits for it: call it before another
    iteration of the same persistent-worker loader starts.
    """

    def __init__(self, source: Iterable, fn: Callable[..., tuple], device: torch.device, depth: int = 2):
        self._source, self._device = iter(source), device
        self._queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self._stop = threading.Event()
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._ended = False
        # the thread holds no reference to self: an abandoned Prefetcher is collected, and closes
        self._thread = threading.Thread(target=_work, args=(self._source, fn, self._stream, self._queue, self._stop),
                                        name="stability-prefetch", daemon=True)
        self._thread.start()

    def __iter__(self) -> Iterator[tuple]:
        return self

    def __next__(self) -> tuple:
        if self._ended:
            raise StopIteration
        got = self._queue.get()
        if got is _DONE or isinstance(got, BaseException):
            self._ended = True
            self._thread.join()
            if got is _DONE:
                raise StopIteration
            raise got
        batch, event = got
        if event is not None:
            current = torch.cuda.current_stream(self._device)
            current.wait_event(event)
            for t in batch:  # memory made on the side stream is not reused before this stream is done with it
                if isinstance(t, torch.Tensor) and t.is_cuda:
                    t.record_stream(current)
        return batch

    def close(self) -> None:
        """Stop making batches and wait for the thread (the item it is on is finished first)."""
        self._stop.set()
        self._ended = True
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.05)  # unblock a put
            except queue.Empty:
                pass
            self._thread.join(timeout=0.05)

    def __del__(self) -> None:
        if getattr(self, "_thread", None) is not None:
            self.close()

"""Pipelining around the model: the sink side of a job on a background thread.

Encoding a mask PNG, drawing an overlay or writing to a database takes time the model could
spend on the next image. :class:`BackgroundSink` wraps any runner sink
(:class:`~tfovss_core.engine.runner.Sink`) and calls its ``write`` and ``failure`` on one worker
thread, in the order the runner called them, through a queue of at most ``max_pending`` calls:
when the sink is slower than the model the runner blocks instead of piling up results, so
memory stays flat. ``done`` runs on the caller's thread (it is asked before the job starts).

The first error the wrapped sink raises is re-raised on the runner's thread at its next call
(or at ``close``), and later calls are dropped, so a job stops at a broken sink as it would
without the thread. ``close`` waits for every pending call, then closes the wrapped sink.
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Collection, Sequence

#: the queue item that tells the worker to stop
_STOP = object()


class BackgroundSink:
    """``sink`` (a runner sink) driven from one worker thread: besides the call being run, at most
    ``max_pending`` calls wait; the next one blocks the caller until one has run."""

    def __init__(self, sink: Any, max_pending: int = 4):
        if max_pending < 1:
            raise ValueError(f"max_pending={max_pending}: at least one call must be able to wait")
        self.sink = sink
        self.max_pending = max_pending
        self._calls: queue.Queue = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._closed = False
        self._worker = threading.Thread(target=self._drain, name="tfovss-sink", daemon=True)
        self._worker.start()

    # -- the worker --------------------------------------------------------------------------------
    def _drain(self) -> None:
        while True:
            call = self._calls.get()
            try:
                if call is _STOP:
                    return
                if self._error is None:   # after an error, drop the rest: the job is aborting
                    call()
            except BaseException as exc:  # noqa: BLE001  (handed to the runner's thread)
                self._error = exc
            finally:
                self._calls.task_done()

    def _raise_pending_error(self) -> None:
        if self._error is not None:   # kept: every later call raises it too
            raise self._error

    def _submit(self, call: Callable[[], None]) -> None:
        if self._closed:
            raise RuntimeError("the background sink is closed")
        self._raise_pending_error()
        self._calls.put(call)      # blocks while max_pending calls wait: the back-pressure

    # -- the sink interface ------------------------------------------------------------------------
    def done(self, run) -> Collection[str]:
        return self.sink.done(run)

    def write(self, outcome) -> None:
        self._submit(lambda: self.sink.write(outcome))

    def failure(self, item, error: BaseException, labels: Sequence[str]) -> None:
        labels = list(labels)
        self._submit(lambda: self.sink.failure(item, error, labels))

    def flush(self) -> None:
        """Waits until every queued call has run; raises the wrapped sink's first error."""
        self._calls.join()
        self._raise_pending_error()

    def close(self) -> None:
        """Flushes, stops the worker and closes the wrapped sink (also after an error, which is
        then raised)."""
        if self._closed:
            return
        self._closed = True
        self._calls.put(_STOP)
        self._worker.join()
        try:
            self.sink.close()
        finally:
            self._raise_pending_error()

    @property
    def pending(self) -> int:
        """Calls queued and not yet started."""
        return self._calls.qsize()


__all__ = ["BackgroundSink"]

"""The background writer of the runner's sink side (:class:`tfovss_core.engine.pipeline.BackgroundSink`):
order kept, bounded queue (a slow sink blocks the producer), the first error re-raised on the
producer's thread, close flushes; and a JobRunner job through it equal to one without."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from tfovss_core.engine.pipeline import BackgroundSink
from tfovss_core.engine.runner import Item, JobRunner, Outcome, RunRef, Work


class GatedSink:
    """Records calls; each write waits for ``gate`` (set: no waiting) so a test controls its speed."""

    def __init__(self, fail_on: str | None = None):
        self.calls: list[tuple] = []
        self.threads: set[str] = set()
        self.gate = threading.Event()
        self.gate.set()
        self.fail_on = fail_on
        self.closed = 0

    def done(self, run):
        return {"held"}

    def write(self, outcome):
        self.gate.wait(10)
        self.threads.add(threading.current_thread().name)
        if outcome.item.id == self.fail_on:
            raise OSError(f"disk full writing {outcome.item.id}")
        self.calls.append(("write", outcome.item.id))

    def failure(self, item, error, labels):
        self.calls.append(("failure", item.id, str(error), tuple(labels)))

    def close(self):
        self.closed += 1


def _outcome(i) -> Outcome:
    return Outcome(Work(Item(str(i), None), ("m",)), results={"m": i})


def test_writes_and_failures_run_in_order_on_one_worker_thread():
    sink = GatedSink()
    bg = BackgroundSink(sink, max_pending=3)
    for i in range(20):
        bg.write(_outcome(i))
        if i == 7:
            bg.failure(Item("7", None), ValueError("bad pixels"), ["m"])
    assert bg.done(RunRef("m", "k")) == {"held"}
    bg.close()
    expected = [("write", str(i)) for i in range(8)] + [("failure", "7", "bad pixels", ("m",))] + \
        [("write", str(i)) for i in range(8, 20)]
    assert sink.calls == expected
    assert sink.threads == {"tfovss-sink"}
    assert sink.closed == 1


def test_a_slow_sink_blocks_the_producer_after_max_pending():
    sink = GatedSink()
    sink.gate.clear()                                  # the sink is stuck on its first write
    bg = BackgroundSink(sink, max_pending=2)
    submitted = []

    def produce():
        for i in range(6):
            bg.write(_outcome(i))
            submitted.append(i)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    deadline = time.time() + 5
    while len(submitted) < 3 and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)                                    # room to run ahead, if it could
    # one write in the sink, two waiting; the fourth blocks the producer
    assert submitted == [0, 1, 2]
    assert bg.pending == 2
    sink.gate.set()
    producer.join(5)
    bg.close()
    assert submitted == list(range(6))
    assert [c[1] for c in sink.calls] == [str(i) for i in range(6)]


def test_the_first_error_is_raised_on_the_producer_and_later_writes_are_dropped():
    sink = GatedSink(fail_on="2")
    bg = BackgroundSink(sink, max_pending=1)
    with pytest.raises(OSError, match="disk full writing 2"):
        for i in range(50):
            bg.write(_outcome(i))
    with pytest.raises(OSError, match="disk full writing 2"):
        bg.close()                                     # close still closes the wrapped sink, then raises
    assert sink.calls == [("write", "0"), ("write", "1")]
    assert sink.closed == 1


def test_close_flushes_every_pending_write_and_refuses_more():
    sink = GatedSink()
    sink.gate.clear()
    bg = BackgroundSink(sink, max_pending=8)
    for i in range(5):
        bg.write(_outcome(i))
    threading.Timer(0.2, sink.gate.set).start()
    bg.close()
    assert [c[1] for c in sink.calls] == ["0", "1", "2", "3", "4"]
    assert sink.closed == 1
    with pytest.raises(RuntimeError, match="closed"):
        bg.write(_outcome(5))


def test_max_pending_below_one_is_refused():
    with pytest.raises(ValueError, match="max_pending=0"):
        BackgroundSink(GatedSink(), max_pending=0)


class Doubler:
    """A predictor: the result of an image is twice its number (fails on negatives)."""

    def predict(self, source):
        if source < 0:
            raise ValueError(f"negative input {source}")
        return np.array([2 * source])


def test_job_runner_with_background_writes_delivers_what_the_serial_sink_gets():
    def job(background):
        sink = GatedSink()
        sink.calls_results = []
        original = sink.write

        def write(outcome):
            sink.calls_results.append((outcome.item.id, int(outcome.results["m"][0])))
            original(outcome)

        sink.write = write
        items = [Item(str(i), i if i != 4 else -1) for i in range(10)]
        stats = JobRunner({"m": Doubler()}, [RunRef("m", "k")], sink, background_writes=background).run(items)
        return sink, stats

    serial, serial_stats = job(0)
    piped, piped_stats = job(2)
    assert piped.calls_results == serial.calls_results == [(str(i), 2 * i) for i in range(10) if i != 4]
    assert piped.calls == serial.calls
    assert ("failure", "4", "negative input -1", ("m",)) in piped.calls
    assert piped.threads == {"tfovss-sink"} and serial.threads == {threading.main_thread().name}
    assert piped.closed == serial.closed == 1
    assert piped_stats.computed == serial_stats.computed == {"m": 9}

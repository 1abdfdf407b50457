"""The Kafka consumer in a process of its own (``--consumer-process``, the default with kafka-python).

In the learner's process the consumer thread and the training loop share one GIL; kafka-python parses every
record in Python and holds it for long stretches, and the loop waits.  Here a child process owns the consumer
(:func:`learner.kafka_io.make_source`) and sends each polled chunk (partitions, offsets, keys, values) through
a pipe; :class:`ProcessFetcher` is the loop's side, with the interface of :class:`learner.kafka_io.Fetcher`.
Its pipe-reader thread decodes each chunk (:class:`learner.input.InputFn`, TF's ``parse_example``, which runs
mostly off the GIL), so the child imports neither TF nor the model: it starts in well under a second and holds
~80 MB.

The group protocol stays in the loop's hands: the child's assignment callbacks are requests answered by the
loop's ``on_assign`` (the PS offsets to resume from) and ``on_revoke`` (finish and write the chunk in flight)
before the child goes on, exactly as the in-process callbacks are; commits are sent to the child, which commits
them between polls.  Chunks are stamped with the loop's assignment generation when they arrive, and the pipe is
ordered, so a chunk polled before a revocation is dropped like the in-process one.  The child exits when the
learner closes it or when the pipe breaks (the learner died); a child that dies makes :meth:`ProcessFetcher.get`
raise.

Broker outages are handled in the child (:class:`learner.kafka_guard.GuardedSource`): its log lines come through
the pipe, and a :class:`learner.kafka_guard.KafkaFailure` (the retry budget ran out) reaches the loop from
:meth:`ProcessFetcher.get` as the same exception, message intact.  Chunks keep every field through the pipe,
the event sequence numbers (``Chunk.seqs``) too.
"""

from __future__ import annotations

import multiprocessing
import queue
import sys
import threading
import time
from typing import Callable

from learner.config import LearnerConfig
from learner.kafka_guard import KafkaFailure
from learner.kafka_io import Chunk, OnAssign, OnRevoke, drain_queue, make_source


def child_main(data, control, cfg: LearnerConfig, max_records: int, poll_timeout: float) -> None:
    """The consumer process: poll, send; answer to the loop's commits and close (``data``: child → loop,
    ``control``: loop → child)."""
    later: list[tuple] = []
    failed = False  # the loop no longer answers after a failure report

    def ask(kind: str, partitions: list[int]):
        if failed:  # e.g. the revocation kafka-python announces while closing
            return {} if kind == "assign" else None
        data.send((kind, partitions))
        while True:
            msg = control.recv()
            if msg[0] == "reply":
                return msg[1]
            later.append(msg)  # a commit or close sent while the loop was answering

    source = None
    try:
        source = make_source(cfg, lambda p: ask("assign", p), lambda p: ask("revoke", p), max_records,
                             say=lambda text: data.send(("log", text)))
        data.send(("ready", None))
        last = 0
        while True:
            while later or control.poll():
                msg = later.pop(0) if later else control.recv()
                if msg[0] == "commit":
                    source.commit(msg[1])
                elif msg[0] == "close":
                    source.close()
                    data.send(("closed", None))
                    return
            chunk = source.poll(poll_timeout)
            if chunk is not None:
                chunk.ends = source.end_offsets()
                data.send(("chunk", chunk))
                last = len(chunk)
            elif last:
                data.send(("size", 0))  # the end of the partitions was reached
                last = 0
    except (EOFError, BrokenPipeError, OSError):
        return  # the learner is gone: its group session expires
    except KafkaFailure as exc:
        failed = True
        try:
            data.send(("failure", str(exc)))
        except Exception:
            pass
        if source is not None:
            try:
                source.close()
            except Exception:  # the broker is away: leaving the group is best effort
                pass
    except BaseException as exc:
        try:
            data.send(("error", f"{type(exc).__name__}: {exc}"))
        except Exception:
            pass


class ProcessFetcher:
    """The loop's side of the consumer process (the interface of :class:`learner.kafka_io.Fetcher`)."""

    def __init__(self, cfg: LearnerConfig, max_records: int, on_assign: OnAssign, on_revoke: OnRevoke,
                 depth: int = 8, poll_timeout: float = 0.1, log: Callable[[str], None] | None = None,
                 decode: Callable[[list[bytes]], object] | None = None):
        self._on_assign, self._on_revoke, self._decode = on_assign, on_revoke, decode
        self._log = log or (lambda s: print(s, file=sys.stderr))
        self.generation = 0
        self.error: BaseException | None = None
        self.max_records = max_records
        self._last_size = 0
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        ctx = multiprocessing.get_context("spawn")  # the learner's threads and TF do not survive a fork
        self._data, child_data = ctx.Pipe(duplex=False)
        child_control, self._control = ctx.Pipe(duplex=False)
        self._send_lock = threading.Lock()
        self._proc = ctx.Process(target=child_main, args=(child_data, child_control, cfg, max_records, poll_timeout),
                                 name="lfm-consumer", daemon=True)
        self._proc.start()
        child_data.close()
        child_control.close()
        kind, value = self._wait_ready()
        if kind == "failure":
            raise KafkaFailure(value)
        if kind != "ready":
            raise RuntimeError(f"consumer process failed: {value}")
        self._closed = threading.Event()
        self._reader = threading.Thread(target=self._read, name="lfm-consumer-pipe", daemon=True)
        self._reader.start()

    def _wait_ready(self) -> tuple[str, object]:
        """The child's first answer (its log lines meanwhile: reaching the broker may take the retry budget)."""
        while True:
            if self._data.poll(1.0):
                try:
                    kind, value = self._data.recv()
                except (EOFError, OSError):
                    return "error", "the consumer process exited while starting"
                if kind != "log":
                    return kind, value
                self._log(value)
            elif not self._proc.is_alive():
                return "error", f"the consumer process exited with code {self._proc.exitcode} while starting"

    def _send(self, msg: tuple) -> None:
        with self._send_lock:
            self._control.send(msg)

    def _read(self) -> None:
        try:
            while True:
                kind, value = self._data.recv()
                if kind == "chunk":
                    if self._decode is not None:
                        value.decoded = self._decode(value.values)
                    value.gen = self.generation
                    self._last_size = len(value)
                    self._q.put(value)
                elif kind == "size":
                    self._last_size = value
                elif kind == "assign":
                    self._send(("reply", self._on_assign(value)))
                elif kind == "revoke":
                    self._on_revoke(value)
                    self._send(("reply", None))
                elif kind == "log":
                    self._log(value)
                elif kind == "failure":
                    self.error = KafkaFailure(value)
                    return
                elif kind == "error":
                    self.error = RuntimeError(f"consumer process failed: {value}")
                    return
                elif kind == "closed":
                    return
        except (EOFError, OSError) as exc:
            if not self._closed.is_set():
                self.error = RuntimeError(f"consumer process exited ({type(exc).__name__})")
        except Exception as exc:  # a failed callback or decode: the loop's next get() raises it
            self.error = RuntimeError(f"consumer pipe reader failed: {type(exc).__name__}: {exc}")
        finally:
            self._closed.set()

    def backlog(self) -> int:
        """Chunks received and waiting for the loop."""
        return self._q.qsize()

    @property
    def at_end(self) -> bool:
        """Whether the consumer's last poll returned less than a full chunk (see ``Fetcher.at_end``)."""
        return self._last_size < self.max_records

    def get(self, timeout: float) -> Chunk | None:
        """Next chunk or None after ``timeout`` seconds."""
        if self.error is not None and self._q.empty():
            raise self.error
        try:
            return self._q.get(timeout=timeout)
        except queue.Empty:
            return None

    def drain(self) -> None:
        """Drop queued chunks (called on revocation, under the loop's lock)."""
        drain_queue(self._q)

    def commit(self, offsets: dict[int, int]) -> None:
        """Ask the consumer process to commit ``{partition: next offset}``."""
        try:
            self._send(("commit", dict(offsets)))
        except OSError as exc:  # the PS offsets are the truth; a lost commit only delays lag reports
            self._log(f"learner: kafka commit of {offsets} not sent ({exc})")

    def close(self) -> None:
        """Commit what is pending and close the consumer (leaves the group); the process exits."""
        try:
            self._send(("close", None))
        except OSError:
            pass
        deadline = time.monotonic() + 30
        while not self._closed.wait(0.1) and time.monotonic() < deadline:
            self.drain()  # a reader blocked on a full queue must reach the "closed" reply
        self._proc.join(timeout=max(0.0, deadline - time.monotonic()) + 5)
        if self._proc.is_alive():
            self._proc.kill()

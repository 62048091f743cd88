"""Signing the chain head as the server runs: every N records or S seconds.

A thread of its own signs, stores and ships checkpoints, so a decision never waits for
one: the group commit only tells it, after a commit is durable, which head that commit
made (one comparison per commit). Only durable heads are signed: a checkpoint naming a
record a crash then lost would fail verification of an honest log.

Every process writing the store runs one; they coordinate through the store. Before
signing, a checkpointer reads the latest stored checkpoint, whoever wrote it, and signs
only if N records (or S seconds) have passed since. One checkpoint is kept per sequence
number (a second process's copy of the same head is dropped); two processes may still
sign two heads a few records apart now and then, which costs nothing. In seconds mode
each waits a little jitter past the due time, so that one of them signs and the other
sees it.

Each stored checkpoint is also appended to ``checkpoints.jsonl`` in
``XSERVE_AUDIT_CHECKPOINT_DIR`` (one JSON object a line, fsynced; 0600 in a 0700
folder): the copy that is meant to leave the host. A failure to sign, store or append is
logged and retried at the next due time; decisions go on being answered.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from datetime import datetime
from pathlib import Path

from xserve.audit.base import AuditSink, Head
from xserve.audit.checkpoint import Checkpoint, Every, Signer
from xserve.security.files import append_line

__all__ = ["CHECKPOINT_FILE", "Checkpointer"]

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoints.jsonl"
"""The file in ``XSERVE_AUDIT_CHECKPOINT_DIR`` that checkpoints are appended to."""

MAX_JITTER_S = 2.0


class Checkpointer:
    def __init__(
        self, sink: AuditSink, signer: Signer, every: Every, folder: Path | None = None
    ) -> None:
        self.sink = sink
        self.signer = signer
        self.every = every
        self.file = None if folder is None else folder / CHECKPOINT_FILE
        self.written = 0
        """Checkpoints this object stored."""
        self._last_seq = 0
        """The highest checkpointed sequence number known here (any process's)."""
        self._due: Head | None = None
        """A durable head N records past the last checkpoint: to sign (records mode)."""
        self._next_check = 0.0
        """When the seconds mode looks again (time.monotonic)."""
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Blocking: read where the store's checkpoints are, then sign in the background."""
        latest = self.sink.latest_checkpoint()
        self._last_seq = latest.seq if latest is not None else 0
        self._next_check = time.monotonic() + self._seconds_until_due(latest)
        self._thread = threading.Thread(
            target=self._run, name="xserve-audit-checkpoints", daemon=True
        )
        self._thread.start()

    def noticed(self, head: Head) -> None:
        """``head`` is durable (called by the group commit): sign it if it is due."""
        records = self.every.records
        if records is None or head.seq - self._last_seq < records:
            return
        with self._cond:
            if self._due is None or head.seq > self._due.seq:
                self._due = head
                self._cond.notify()

    def close(self) -> None:
        """Blocking: stop the thread, then sign the head as it is now if it has moved past
        the last checkpoint (a shutdown leaves no record unsigned that it could sign)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        try:
            self._refresh()
            head = self.sink.durable_head()
            if head.seq > self._last_seq:
                self._store(self.signer.sign(head))
        except Exception as exc:
            log.error("audit checkpoint at shutdown failed: %s: %s", type(exc).__name__, exc)

    def checkpoint_now(self) -> tuple[Checkpoint, bool]:
        """Blocking: sign the durable head now and store it; whether it was stored (False:
        a checkpoint of that head was there already)."""
        checkpoint = self.signer.sign(self.sink.durable_head())
        return checkpoint, self._store(checkpoint)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and self._due is None:
                    wait = self._wait()
                    if wait is not None and wait <= 0:
                        break
                    self._cond.wait(wait)
                if self._stopping:
                    return
                due, self._due = self._due, None
            try:
                if due is not None:
                    self._records_due(due)
                else:
                    self._seconds_due()
            except Exception as exc:  # logged; the next due time tries again
                log.error("audit checkpoint failed: %s: %s", type(exc).__name__, exc)
                if self.every.seconds is not None:
                    self._next_check = time.monotonic() + self.every.seconds

    def _wait(self) -> float | None:
        if self.every.seconds is None:
            return None
        return self._next_check - time.monotonic()

    def _refresh(self) -> Checkpoint | None:
        latest = self.sink.latest_checkpoint()
        if latest is not None:
            self._last_seq = max(self._last_seq, latest.seq)
        return latest

    def _records_due(self, head: Head) -> None:
        self._refresh()  # another process may have signed since
        assert self.every.records is not None
        if head.seq - self._last_seq >= self.every.records:
            self._store(self.signer.sign(head))

    def _jitter(self) -> float:
        assert self.every.seconds is not None
        return random.uniform(0, min(MAX_JITTER_S, self.every.seconds / 10))

    def _seconds_until_due(self, latest: Checkpoint | None) -> float:
        """How long until a checkpoint is due (seconds mode), the latest being ``latest``."""
        seconds = self.every.seconds
        if seconds is None:
            return 0.0
        if latest is None:
            return seconds + self._jitter()
        try:
            signed = datetime.fromisoformat(latest.time).timestamp()
        except ValueError:  # unreadable: as if long ago
            return self._jitter()
        age = max(time.time() - signed, 0.0)  # a clock behind another host's: one period
        return max(seconds - age, 0.0) + self._jitter()

    def _seconds_due(self) -> None:
        assert self.every.seconds is not None
        latest = self._refresh()
        if latest is not None:
            try:
                age = time.time() - datetime.fromisoformat(latest.time).timestamp()
            except ValueError:
                age = self.every.seconds
            if age < self.every.seconds:  # another process signed meanwhile
                self._next_check = time.monotonic() + self._seconds_until_due(latest)
                return
        head = self.sink.durable_head()
        if head.seq > self._last_seq:
            self._store(self.signer.sign(head))
        self._next_check = time.monotonic() + self.every.seconds + self._jitter()

    def _store(self, checkpoint: Checkpoint) -> bool:
        stored = self.sink.add_checkpoint(checkpoint)
        self._last_seq = max(self._last_seq, checkpoint.seq)
        if stored:
            self.written += 1
            if self.file is not None:
                append_line(self.file, checkpoint.to_json())
            log.debug("audit checkpoint: record %d signed", checkpoint.seq)
        return stored

"""A time limit on reading one request, so that no request can hold a worker until TorchServe's
responseTimeout kills it (and fails every request of its batch, and the next ones while a new
worker loads).

Limits on bytes and pixels bound most of the cost of decoding, not all of it: a progressive JPEG
is decoded once per scan, and a few bytes make a scan (handlers/image_classifier.py bounds
those too). The deadline is what holds whatever a limit misses: SIGALRM, whose Python handler
runs as soon as the interpreter gets control back. Decoders hand it back often: Pillow feeds its
decoder from a Python loop (4 KB a call: handlers/image_classifier.py), and the tokenizers and JSON parsing work per text
and per body. It is raised as a BaseException, so the `except Exception` of a parser of
untrusted bytes (Pillow's plugins, ours) cannot turn it into a different answer.
"""

from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager


class DeadlineExceeded(BaseException):
    """Reading one request took longer than its limit."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"over {seconds * 1000:.0f} ms")
        self.seconds = seconds


@contextmanager
def deadline(seconds: float | None):
    """Raises DeadlineExceeded in this thread once `seconds` have passed inside the block.
    Signals reach only the main thread (TorchServe's worker runs its handler there): elsewhere,
    or with no limit, the block is timed after the fact instead."""
    if not seconds:
        yield
        return
    if threading.current_thread() is not threading.main_thread():
        started = time.monotonic()
        yield
        if time.monotonic() - started > seconds:
            raise DeadlineExceeded(seconds)
        return

    def expire(signum, frame):
        raise DeadlineExceeded(seconds)

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)

"""Stop and wake-up requests that a signal handler may make without deadlocking.

Everything here is built on ``queue.SimpleQueue.put``, which is reentrant, and plain attribute
writes: never an Event's lock, which a handler could find held by the code it interrupted."""

from __future__ import annotations

import queue
import signal
from collections.abc import Iterable
from typing import Protocol


class StopRequest(Protocol):
    """What a wait needs of a stop request: ``threading.Event`` has it too."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...


class Flag:
    """A one-way ``threading.Event`` (no ``clear``) whose ``set`` takes no lock.

    ``set`` stores the flag and posts a token; a waiter takes the token and puts it back, so
    every waiter, present and future, sees it.
    """

    def __init__(self) -> None:
        self._set = False
        self._tokens: queue.SimpleQueue[None] = queue.SimpleQueue()

    def set(self) -> None:
        self._set = True
        self._tokens.put(None)

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float | None = None) -> bool:
        if self._set:
            return True
        try:
            self._tokens.get(timeout=timeout)
        except queue.Empty:
            return self._set
        self._tokens.put(None)
        return True


class Wakeup:
    """Wakes one waiting thread (the daemon's main loop) from handlers and other threads."""

    def __init__(self) -> None:
        self._posts: queue.SimpleQueue[None] = queue.SimpleQueue()

    def post(self) -> None:
        self._posts.put(None)

    def wait(self, timeout: float) -> None:
        """Return after a post (taking every post so far) or after ``timeout`` seconds."""
        try:
            self._posts.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            try:
                self._posts.get_nowait()
            except queue.Empty:
                return


def stop_on(signums: Iterable[int]) -> Flag:
    """A stop request that each of ``signums`` sets."""
    stop = Flag()

    def handler(signum: int, frame: object) -> None:
        stop.set()

    for signum in signums:
        signal.signal(signum, handler)
    return stop

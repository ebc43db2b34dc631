"""Stopping on a signal: in the main thread of a worker, a launcher or `final`, SIGTERM and SIGHUP
raise `Stopped` (SIGINT its usual KeyboardInterrupt, of which `Stopped` is a kind), so each can mark
what it was running before it exits."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Stopped(KeyboardInterrupt):
    """The process was asked to stop (SIGTERM, SIGHUP; or SIGINT, once a library wrapped its
    KeyboardInterrupt): a worker's trial is failed, marked lost, and the worker exits. A
    KeyboardInterrupt, so nothing on the way swallows it and Optuna still tells the trial FAIL
    before passing it on."""


_received: list[str] = []  # the stop signals this process got inside `stop_on_signals`


def stop_requested() -> str | None:
    """The first stop signal received (SIGTERM, SIGHUP, SIGINT), or None."""
    return _received[0] if _received else None


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP raise `Stopped` in the main thread once (Ctrl-C raises KeyboardInterrupt),
    so a worker fails and marks its running trial before it exits, and a launcher stops its
    workers. A library can catch that exception mid-call and raise its own (psycopg cancels the
    query, SQLAlchemy and Optuna wrap the error): after a signal, whatever leaves the block is
    `Stopped`."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread (tests run workers in threads)
        return
    _received.clear()

    def stop(signum: int, _frame: object) -> None:
        _received.append(signal.Signals(signum).name)
        # Only the first stops: the same stop often comes twice (Slurm's scancel signals every
        # process of a job, and the batch script passes it on to its workers), and a second
        # exception would break off the marking of the trial that the first one started.
        if len(_received) == 1:
            raise Stopped(_received[-1])

    def interrupt(signum: int, frame: object) -> None:
        _received.append(signal.SIGINT.name)
        signal.default_int_handler(signum, frame)

    handlers = {signal.SIGTERM: stop, signal.SIGHUP: stop}
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not if it is ignored
        handlers[signal.SIGINT] = interrupt
    previous = {s: signal.signal(s, handler) for s, handler in handlers.items()}
    try:
        yield
    except Exception as e:
        if stop_requested() is None:
            raise
        raise Stopped(stop_requested()) from e
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)

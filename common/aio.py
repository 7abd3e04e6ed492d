"""Small asyncio helpers shared by the components."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator

log = logging.getLogger(__name__)


# A task still running this long after being cancelled is cancelled again. On Python 3.11 a task awaiting
# ``asyncio.wait_for`` loses a cancellation that arrives just as the awaited future completes (CPython gh-86296);
# in a retry loop it then runs on and a plain ``await task`` hangs for good (seen in CI: a proxy stop never
# returned). Long enough that cleanup in a ``finally`` (bounded store closes, lease revokes) is not cut short.
RECANCEL_AFTER = 5.0


async def cancel_and_wait(task: asyncio.Task[object] | None) -> None:
    """Cancel ``task`` (if any) and wait until it has finished, swallowing its cancellation; a task that lost
    the cancellation is cancelled again every :data:`RECANCEL_AFTER` seconds."""
    if task is None:
        return
    task.cancel()
    while not task.done():
        await asyncio.wait({task}, timeout=RECANCEL_AFTER)
        if not task.done():
            log.warning("task %s is still running %.0fs after being cancelled; cancelling it again",
                        task.get_name(), RECANCEL_AFTER)
            task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait until ``event`` is set or ``timeout`` seconds pass; True if it was set.

    Not ``asyncio.wait_for(event.wait(), timeout)``: on Python 3.11 that swallows a cancellation arriving just as
    the event fires (CPython gh-86296), which left a cancelled loop task running forever."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)  # what stops every daemon cleanly


@contextlib.contextmanager
def stop_on_signals(event: asyncio.Event | None = None) -> Iterator[asyncio.Event]:
    """An event that SIGTERM or SIGINT sets while the block runs: the one "run until a signal arrives" of every
    daemon (``with stop_on_signals() as stop: ... await stop.wait()``). The handlers are removed afterwards."""
    stop = event or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    try:
        yield stop
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)

"""common.aio: cancellation that always ends a task, waits that never lose a cancellation (Python 3.11)."""

from __future__ import annotations

import asyncio

from common import aio
from common.aio import cancel_and_wait, wait_event


async def _wait_for_loop(event: asyncio.Event) -> None:
    """The pattern that loses a cancellation on 3.11 (gh-86296): wait_for in a retry loop."""
    while True:
        try:
            await asyncio.wait_for(event.wait(), 2)
        except TimeoutError:
            pass
        event.clear()


async def test_cancel_and_wait_ends_a_task_that_swallowed_the_cancellation(monkeypatch) -> None:
    monkeypatch.setattr(aio, "RECANCEL_AFTER", 0.2)
    event = asyncio.Event()
    task = asyncio.create_task(_wait_for_loop(event))
    await asyncio.sleep(0.05)
    event.set()  # the awaited future completes ...
    await asyncio.wait_for(cancel_and_wait(task), 5)  # ... as the cancellation arrives; it must still end
    assert task.done()


async def test_wait_event_keeps_a_cancellation_that_races_the_event() -> None:
    event = asyncio.Event()

    async def loop() -> None:
        while True:
            await wait_event(event, 2)
            event.clear()

    task = asyncio.create_task(loop())
    await asyncio.sleep(0.05)
    event.set()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=3)
    assert done, "the cancellation was lost"


async def test_wait_event_reports_whether_the_event_was_set() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.05) is False
    event.set()
    assert await wait_event(event, 0.05) is True


async def test_stop_on_signals_sets_its_event_on_sigterm_and_removes_the_handler() -> None:
    import os
    import signal

    from common.aio import stop_on_signals

    with stop_on_signals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(stop.wait(), 5)
    assert not asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM), "the handler is gone"

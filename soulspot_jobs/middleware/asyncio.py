"""``DaemonAsyncIO``: Dramatiq's AsyncIO middleware with its event loop in a daemon thread.

Dramatiq's event-loop thread (for ``async def`` actors) is not a daemon thread and is stopped
only at the very end of ``Worker.stop``. With Redis down, ``Worker.stop`` fails earlier (it
cannot requeue the messages it prefetched; they stay in its ack set and come back through
recovery), and the process then waits for that thread for ever. A daemon thread lets the process
exit on SIGTERM whatever state Redis is in.
"""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.asyncio import EventLoopThread, set_event_loop_thread
from dramatiq.middleware import AsyncIO

__all__ = ["DaemonAsyncIO"]


class DaemonAsyncIO(AsyncIO):
    """Dramatiq's AsyncIO middleware with its event loop in a daemon thread."""

    def before_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        thread = EventLoopThread(self.logger)
        thread.daemon = True
        thread.start(timeout=1.0)
        set_event_loop_thread(thread)

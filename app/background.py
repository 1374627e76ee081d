"""The API process's background loops (reaper, webhook dispatcher): one thread each."""

from __future__ import annotations

import threading
from collections.abc import Callable

import structlog

log = structlog.get_logger()


class PeriodicThread(threading.Thread):
    """Calls `step` every `interval_s` until stopped. A failing round is logged and the next one
    runs anyway: these loops recover lost work, so they must outlive a database blip."""

    def __init__(
        self,
        name: str,
        interval_s: float,
        step: Callable[[], object],
        on_exit: Callable[[], object] | None = None,
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.interval_s = interval_s
        self.step = step
        self.on_exit = on_exit
        self.stopped = threading.Event()

    def run(self) -> None:
        try:
            while not self.stopped.wait(self.interval_s):
                try:
                    self.step()
                except Exception:
                    log.exception("background.error", thread=self.name)
        finally:
            if self.on_exit:
                self.on_exit()

    def stop(self) -> None:
        self.stopped.set()

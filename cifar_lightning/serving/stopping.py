"""Ctrl+C and SIGTERM (kill, docker stop, systemd) stop serve.py the same way, around two LitServe 0.2.19 habits."""

from __future__ import annotations

import logging
import os
import signal
import threading


class Stopping:
    """Both signals raise KeyboardInterrupt in the main process, which LitServe handles by stopping its workers.

    The HTTP server processes LitServe forks inherit these handlers; there the signal's default action ends the
    process. And LitServe's worker monitor thread polls the manager process that LitServe's own shutdown closes,
    logging the connection error as "Monitoring worker crashed" with a traceback: once a stop has begun, that one
    record is dropped."""

    def __init__(self) -> None:
        self.main_pid, self.begun = os.getpid(), threading.Event()

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self.handle)
        logging.getLogger("litserve.server").addFilter(self.keep)

    def handle(self, signum: int, frame: object) -> None:
        if os.getpid() != self.main_pid:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        self.begun.set()
        raise KeyboardInterrupt

    def keep(self, record: logging.LogRecord) -> bool:
        return not (self.begun.is_set() and record.getMessage() == "Monitoring worker crashed")

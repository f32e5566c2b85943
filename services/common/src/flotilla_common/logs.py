"""Logging setup: one format for every service, JSON lines when asked."""

from __future__ import annotations

import json
import logging
import os
import sys

__all__ = ["setup_logging"]


class _JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": self.formatTime(record),
            "service": self.service,
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data)


def setup_logging(service: str) -> None:
    """Log to stderr; FLOTILLA_LOG_LEVEL sets the level, FLOTILLA_LOG_JSON=1 the format."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("FLOTILLA_LOG_JSON") == "1":
        handler.setFormatter(_JsonFormatter(service))
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(os.environ.get("FLOTILLA_LOG_LEVEL", "INFO").upper())

"""One log format for API and workers: JSON lines (python-json-logger) that a log shipper can
index by job id, model, queue and durations, passed as ``extra=`` fields. ``TEXTGEN_LOG_LEVEL``
sets the level; ``TEXTGEN_LOG_FORMAT=text`` gives plain lines for a terminal."""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

from textgen_core.settings import Settings

# Loggers that install their own handlers; they are made to go through the root handler instead.
_OWN_HANDLERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "celery.task", "celery.worker")


def formatter(fmt: str) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(process)d %(threadName)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger", "threadName": "thread"},
            reserved_attrs=[*RESERVED_ATTRS, "color_message"],  # uvicorn's ANSI copy of the message
        )
    return logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


def configure_logging(settings: Settings, service: str) -> None:
    """Send every log record to stderr in the configured format, tagged with ``service``."""
    level = settings.log_level.upper()
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(level)  # also caps loggers that set their own level (uvicorn's)
    handler.setFormatter(formatter(settings.log_format))
    handler.addFilter(_ServiceFilter(service))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in _OWN_HANDLERS:
        logger = logging.getLogger(name)
        # A logger with its own handler now goes through ours; one turned off (uvicorn's access
        # log under --no-access-log: no handler, no propagation) stays off.
        if logger.handlers:
            logger.handlers.clear()
            logger.propagate = True


class _ServiceFilter(logging.Filter):
    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        return True

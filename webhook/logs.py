"""One JSON object per log line, so that admissions can be searched by uid, namespace, decision.

Every admission writes one line, so the line is cheap: orjson encodes it, and log records skip
the caller, thread and process lookups that no line shows.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

from webhook.core.redact import redact

ADMISSION_LOGGER = "webhook.admission"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update({name: _redacted(value) for name, value in fields.items()})
        if record.exc_info:
            line["exception"] = redact(self.formatException(record.exc_info))
        try:
            return orjson.dumps(line, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        except TypeError:  # what orjson refuses (an integer beyond 64 bits), json still writes
            return json.dumps(line, default=str)


def _redacted(value: object) -> object:
    """A field with no secret a URL carried: every string in it redacted, before encoding."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list | tuple):
        return [_redacted(item) for item in value]
    if isinstance(value, dict):
        return {name: _redacted(item) for name, item in value.items()}
    return value


def configure_logging(level: str) -> None:
    """Route every logger (uvicorn's included) through one JSON handler on stderr."""
    # No line shows the caller's file and line, thread or process; skip looking them up (the
    # logging HOWTO's "Optimization" section names these switches).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True

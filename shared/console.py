"""Human-readable log lines for an operator at a terminal; JSON stays the format everywhere else.

`shared/logs.py` owns records, redaction and the JSON format; this module only formats a record as one short line
(`12:00:01 WARNING rotation.failed  rotation failed: apply: ...  cluster_id=... rotation_id=...`) and decides
when to: stderr is a terminal and the process is not a Functions worker (whose logs must stay machine-readable).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from datetime import datetime
from typing import IO, Final

from shared import logs

# Set by the Functions host for its workers (locally under Core Tools and in Azure).
FUNCTIONS_HOST_VARIABLES: Final = ("FUNCTIONS_WORKER_DIRECTORY", "FUNCTIONS_EXTENSION_VERSION")
_STANDARD: Final = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "taskName"}
_HIDDEN: Final = frozenset({"event", "alert", "color_message"})
_COLORS: Final = {"DEBUG": "2", "INFO": "36", "WARNING": "33", "ERROR": "1;31", "CRITICAL": "1;31"}


def under_functions_host(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return any(env.get(name) for name in FUNCTIONS_HOST_VARIABLES)


def wants_console(stream: IO[str], environ: Mapping[str, str] | None = None) -> bool:
    """Console lines only for a person: a terminal, and never under the Functions host."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and not under_functions_host(environ)


class ConsoleFormatter(logging.Formatter):
    """`HH:MM:SS LEVEL event  message  key=value ...`, redacted like every other output."""

    _REDACTOR: Final = logs.SecretRedactor()

    def __init__(self, color: bool = True) -> None:
        super().__init__()
        self.color = color

    def format(self, record: logging.LogRecord) -> str:
        self._REDACTOR.filter(record)  # also safe when the handler's filter already ran (it marks the record)
        level = f"{record.levelname:<7}"
        if self.color:
            level = f"\x1b[{_COLORS.get(record.levelname, '0')}m{level}\x1b[0m"
        event = record.__dict__.get("event")
        head = f"{datetime.fromtimestamp(record.created).strftime('%H:%M:%S')} {level} "
        head += f"{event}  " if event else f"{record.name}  "
        fields = {
            key: value
            for key, value in record.__dict__.items()
            if key not in _STANDARD and key not in _HIDDEN and not key.startswith("_") and value not in (None, "")
        }
        tail = "  " + " ".join(f"{key}={value}" for key, value in fields.items()) if fields else ""
        line = head + record.getMessage() + tail
        if record.exc_text:
            line += "\n" + record.exc_text
        return line


def configure(level: str, stream: IO[str]) -> bool:
    """Switch the product's log handler to console lines when a person is watching `stream`; True if it did."""
    if not wants_console(stream):
        return False
    logs.configure_logging(level, formatter=ConsoleFormatter(color=True))
    return True

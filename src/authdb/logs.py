"""Log lines: one line per record, as text or as JSON objects (``AUTHDB_LOG_FORMAT``).

Security events reach the ``authdb.audit`` logger once their transaction commits (see
``authdb.services.audit``), one record each with the event's fields attached as
``record.security_event``. Both formatters keep every record on one line: control characters
that a client put in a user agent or a login name are escaped, so nobody can forge a line.
Tracebacks stay in the record (``exception`` in JSON, escaped newlines in text).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["text", "json"]

# Attributes every LogRecord has; anything else was passed by the caller as ``extra``.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}


# A record may ask to keep its line breaks in text logs (the development mailer's message,
# whose link must stay clickable); JSON logs keep every record on one line regardless.
VERBATIM = "authdb_verbatim"


def one_line(text: str, *, keep: str = "") -> str:
    """``text`` with line breaks and other control characters escaped (``\\n``, ``\\x1b``),
    except the characters in ``keep``."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch in keep else ascii(ch)[1:-1] for ch in text)


def _time(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TextFormatter(logging.Formatter):
    """``2026-11-29T22:45:14.123Z INFO authdb.audit: login_ok user=3 ...`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_time(record)} {record.levelname} {record.name}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        elif record.exc_text:
            line += "\n" + record.exc_text
        return one_line(line, keep="\n" if getattr(record, VERBATIM, False) else "")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, ``message``, the fields the
    caller passed as ``extra`` (a security event's under ``event``) and ``exception``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _time(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and key != VERBATIM:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class RedactQuery(logging.Filter):
    """Blanks every query value in uvicorn's access lines (``/verify?token=[redacted]``).

    Emailed links carry their token in the query string, so a request line is a secret;
    the parameter names stay, which is what a reader of access logs needs.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            record.args = (*args[:2], redact_query(args[2]), *args[3:])
        return True


def redact_query(path: str) -> str:
    """``/reset?token=abc&x=1`` → ``/reset?token=[redacted]&x=[redacted]``."""
    base, mark, query = path.partition("?")
    if not mark:
        return path
    # A part without "=" is a bare value (``?SECRET``): it goes too, name and all.
    shown = (
        f"{part.partition('=')[0]}=[redacted]" if "=" in part else "[redacted]"
        for part in query.split("&")
        if part
    )
    return base + "?" + "&".join(shown)


def json_line(level: str, message: str, logger: str = "authdb.serve") -> str:
    """``message`` as one line that :class:`JsonFormatter` would have written."""
    record = logging.makeLogRecord({"name": logger, "levelname": level, "msg": message})
    return JsonFormatter().format(record)


def formatter_class(log_format: LogFormat) -> type[logging.Formatter]:
    return JsonFormatter if log_format == "json" else TextFormatter


def uvicorn_log_config(log_format: LogFormat, *, level: str = "INFO") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for ``authdb serve``: uvicorn's loggers and authdb's,
    each line in ``log_format``, to standard error."""
    name = f"{__name__}.{formatter_class(log_format).__name__}"
    stream = {"class": "logging.StreamHandler", "formatter": "line", "stream": "ext://sys.stderr"}
    own = {"handlers": ["default"], "level": level, "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"line": {"()": name}},
        "filters": {"redact_query": {"()": f"{__name__}.RedactQuery"}},
        "handlers": {"default": stream, "access": {**stream, "filters": ["redact_query"]}},
        "loggers": {
            "uvicorn": own,
            "uvicorn.error": {"level": level},
            "uvicorn.access": {**own, "handlers": ["access"]},
            "authdb": own,
        },
    }

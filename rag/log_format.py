"""How the server's log lines look: `text` (`cascade-rag: message`) or `json` (one JSON object a line: time, level,
logger, message, and the fields of a call's line: request_id, method, status, duration_s, protocol)."""
import json
import logging
import sys
import time

LOG_FORMATS = ("text", "json")


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) +
                f".{int(record.msecs):03d}Z", "level": record.levelname, "logger": record.name,
                "message": record.getMessage()}
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = f"{record.levelname.lower()}: " if record.levelno >= logging.WARNING else ""
        return f"cascade-rag: {level}{super().format(record)}"


class OursOrWarnings(logging.Filter):
    """Our own records from INFO up, other libraries' from WARNING up (some set their loggers to DEBUG)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name.split(".")[0] == "cascade_rag"


def formatter(log_format: str) -> logging.Formatter:
    if log_format not in LOG_FORMATS:
        raise ValueError(f"unknown log format {log_format!r}; choose one of {', '.join(LOG_FORMATS)}")
    return JSONFormatter() if log_format == "json" else TextFormatter()


def configure(log_format: str, stream=None) -> None:
    """The root logger writes our INFO lines (and everyone's warnings) to stderr in `log_format`."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter(log_format))
    handler.addFilter(OursOrWarnings())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.getLogger("cascade_rag").setLevel(logging.INFO)

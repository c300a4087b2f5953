"""Masking secrets (API keys, Hugging Face tokens, bearer and basic credentials) in logs and texts.

``install_log_redaction()`` masks every log record of the process, whichever logger or handler it
goes through (uvicorn's and NiceGUI's included, even those configured after LlamaMan starts): it wraps
the log record factory rather than adding a filter to handlers that may not exist yet.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable

MASK = "***"

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\bllm-[A-Za-z0-9_\-]{6,}"), "llm-" + MASK),
    (re.compile(r"\bhf_[A-Za-z0-9]{6,}"), "hf_" + MASK),
    (re.compile(r"(?i)(authorization['\"]?\s*[:=,]\s*['\"]?(?:bearer\s+|basic\s+)?)[^\s'\",}]+"),
     r"\1" + MASK),
    # A credential holds a digit or symbol somewhere; "basic authentication" in prose does not.
    (re.compile(r"(?i)\b(bearer|basic)(\s+)(?=[A-Za-z]*[0-9._~+/\-])[A-Za-z0-9._~+/\-]{6,}=*"),
     r"\1\2" + MASK),
    (re.compile(r"(?i)(x-api-key['\"]?\s*[:=,]\s*['\"]?)[^\s'\",}]+"), r"\1" + MASK),
    (re.compile(r"(?i)((?:hf_token|api_key|password|secret_key)['\"]?\s*[:=]\s*['\"]?)[^\s'\",}]+"),
     r"\1" + MASK),
)  # fmt: skip

_extra: set[str] = set()
_lock = threading.Lock()


def add_secrets(values: Iterable[str | None]) -> None:
    """Literal secrets without a recognisable shape (keys from LLAMAMAN_API_KEYS, passwords)."""
    with _lock:
        _extra.update(v for v in values if v and len(v) >= 4)


def redact(text: str) -> str:
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    for secret in _extra:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


class RedactingFilter(logging.Filter):
    """Masks secrets in a record's message and traceback; never drops a record."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True  # a broken format string is the logging module's to report
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            # Formatters reuse exc_text when it is set, so the masked traceback is what gets written.
            record.exc_text = redact(self._formatter.formatException(record.exc_info))
        return True


_installed: list[Callable[..., logging.LogRecord]] = []


def install_log_redaction(secrets: Iterable[str | None] = ()) -> None:
    """Mask secrets in every log record from now on (idempotent)."""
    add_secrets(secrets)
    with _lock:
        if _installed:
            return
        previous = logging.getLogRecordFactory()
        masker = RedactingFilter()

        def factory(*args: object, **kwargs: object) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            masker.filter(record)
            return record

        logging.setLogRecordFactory(factory)
        _installed.append(previous)


# Flags whose value is a secret: shown as MASK even to those who may see launch arguments.
SECRET_FLAGS = frozenset({"--hf-token", "-hft", "--api-key", "--ssl-key-file", "--api-key-file"})


def redact_argv(argv: list[str]) -> list[str]:
    """A launch command fit to show: the values of secret flags masked (``--flag value`` and
    ``--flag=value``), and anything shaped like a key or token masked wherever it stands."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(MASK)
            hide_next = False
            continue
        flag, eq, _ = arg.partition("=")
        if flag in SECRET_FLAGS:
            if eq:
                out.append(f"{flag}={MASK}")
            else:
                out.append(arg)
                hide_next = True
            continue
        out.append(redact(arg))
    return out

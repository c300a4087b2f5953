"""The secret key that signs sessions: SECRET_KEY, or one generated once and kept in DATA_DIR."""

from __future__ import annotations

import contextlib
import os
import secrets

from llamaman.core.config import Settings


def storage_secret(settings: Settings) -> str:
    if settings.secret_key:
        return settings.secret_key
    path = settings.data_dir / "secret_key"
    if path.exists():
        key = path.read_text().strip()
        if key:
            return key
    key = secrets.token_urlsafe(48)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # Created private from the start: the key signs every session cookie.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key)
    return key


def secure_data_dir(settings: Settings) -> None:
    """Make DATA_DIR and the logs folder private (0700), with the files LlamaMan writes there 0600:
    the database, the secret key and llama-server logs (prompts can appear in them)."""
    for folder in (settings.data_dir, settings.logs_dir):
        if folder is None or not folder.is_dir():
            continue
        with contextlib.suppress(OSError):  # a folder owned by someone else (a mount): leave it
            if folder.stat().st_mode & 0o077:
                folder.chmod(0o700)
    candidates = [settings.data_dir / "secret_key", *settings.data_dir.glob("llamaman.db*")]
    if settings.logs_dir is not None and settings.logs_dir.is_dir():
        candidates += [f for f in settings.logs_dir.iterdir() if f.is_file()]
    for f in candidates:
        with contextlib.suppress(OSError):
            if f.is_file() and f.stat().st_mode & 0o077:
                f.chmod(0o600)

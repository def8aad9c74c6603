"""Keyed pseudonyms of patients, studies and paths: HMAC-SHA256 under a secret key.

A pseudonym depends on the key and the value only, so one identifier gets one pseudonym
wherever it is written (a DICOM header, a file name, a table); a UID gets a UID.

The key is never logged or written into a run, a manifest or an artifact, so a pseudonym
cannot be confirmed by guessing an identifier (an unkeyed or publicly salted hash can).
The key comes from, in order: a key file named in the config, ``$MEDMM_PSEUDONYM_KEY``,
or a key generated once into the user's config folder
(``$XDG_CONFIG_HOME/medmm/pseudonym.key``, else ``~/.config/medmm/pseudonym.key``, mode 0600).
Keep that key to get the same pseudonyms in later runs; share it only with whoever may
re-identify.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from medmm.io.errors import MedmmInputError

KEY_ENV = "MEDMM_PSEUDONYM_KEY"
KEY_FILE_NAME = "pseudonym.key"
PSEUDONYM_CHARS = 16  # 64 bits: no collisions in any cohort, short enough to read


def default_key_path() -> Path:
    """``$XDG_CONFIG_HOME/medmm/pseudonym.key`` (``~/.config`` when XDG_CONFIG_HOME is unset)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "medmm" / KEY_FILE_NAME


def _read_key_file(path: Path) -> bytes:
    try:
        key = path.read_bytes().strip()
    except OSError as exc:
        raise MedmmInputError(path, f"pseudonym key file unreadable ({exc.strerror or type(exc).__name__})") from None
    if not key:
        raise MedmmInputError(path, "pseudonym key file is empty")
    return key


def _generate_key_file(path: Path) -> None:
    """Write a fresh random key to ``path`` readable by its owner only. The key is written
    to a private temporary file and then hard-linked into place, so that concurrent first
    runs agree on one complete key (the link fails for all but the first)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_hex(32).encode() + b"\n")
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process created it first: use theirs
    finally:
        tmp.unlink(missing_ok=True)


def pseudonym_key(key_file: str | Path | None = None) -> bytes:
    """The secret key of this user's pseudonyms (see the module doc for where it comes from)."""
    if key_file is not None:
        return _read_key_file(Path(key_file).expanduser())
    from_env = os.environ.get(KEY_ENV, "").strip()
    if from_env:
        return from_env.encode()
    path = default_key_path()
    if not path.exists():
        _generate_key_file(path)
    return _read_key_file(path)


def _digest(value: str, key: bytes) -> bytes:
    if not key:
        raise ValueError("a pseudonym needs a non-empty key")
    return hmac.new(key, str(value).encode(), hashlib.sha256).digest()


def pseudonym(value: str, key: bytes) -> str:
    """The keyed pseudonym of an identifier: HMAC-SHA256(key, value), 16 hex characters
    (fits a DICOM SH value such as AccessionNumber)."""
    return _digest(value, key).hex()[:PSEUDONYM_CHARS]


def pseudonym_uid(uid: str, key: bytes) -> str:
    """The keyed pseudonym of a DICOM UID, itself a valid UID: ``2.25.<decimal>`` of the
    first 128 bits of HMAC-SHA256(key, uid) (the UUID-derived root, DICOM PS3.5 B.2)."""
    return f"2.25.{int.from_bytes(_digest(uid, key)[:16], 'big')}"

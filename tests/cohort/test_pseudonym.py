"""Keyed pseudonyms: HMAC-SHA256 under a secret that comes from the config, the environment
or a key generated once (mode 0600) into the user's config folder."""

from __future__ import annotations

import hashlib
import hmac
import multiprocessing
import stat

import pytest

from medmm.cohort.pseudonym import KEY_ENV, default_key_path, pseudonym, pseudonym_key
from medmm.io.errors import MedmmInputError


def test_pseudonym_is_hmac_sha256_of_the_key_and_differs_between_keys():
    expected = hmac.new(b"k1", b"MRN99812", hashlib.sha256).hexdigest()[:16]
    assert pseudonym("MRN99812", b"k1") == expected
    assert pseudonym("MRN99812", b"k2") != expected
    # not the unkeyed / publicly salted hash a guesser could compute
    assert expected != hashlib.sha256(b"MRN99812").hexdigest()[:16]
    with pytest.raises(ValueError):
        pseudonym("MRN99812", b"")


def test_key_comes_from_the_config_file_before_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "from-env")
    key_file = tmp_path / "k.key"
    key_file.write_text("from-file\n")
    assert pseudonym_key(key_file) == b"from-file"
    assert pseudonym_key() == b"from-env"
    empty = tmp_path / "empty.key"
    empty.write_text("\n")
    with pytest.raises(MedmmInputError, match="empty.key: pseudonym key file is empty"):
        pseudonym_key(empty)
    with pytest.raises(MedmmInputError, match="missing.key: pseudonym key file unreadable"):
        pseudonym_key(tmp_path / "missing.key")


def test_a_key_is_generated_once_into_the_config_folder_with_mode_0600(tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    path = default_key_path()
    assert path == tmp_path / "xdg" / "medmm" / "pseudonym.key"
    first = pseudonym_key()
    assert len(first) == 64 and path.read_bytes().strip() == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert pseudonym_key() == first  # kept, not regenerated
    assert [p.name for p in path.parent.iterdir()] == ["pseudonym.key"]  # no temporary file left


def _key_in_child(_):
    return pseudonym_key()


def test_concurrent_first_runs_agree_on_one_key(tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    with multiprocessing.get_context("fork").Pool(4) as pool:
        keys = pool.map(_key_in_child, range(8))
    assert len(set(keys)) == 1 and keys[0] == default_key_path().read_bytes().strip()

"""The pseudonymisation key: environment first, then the demo's 0600 key file, else refuse."""

from __future__ import annotations

import os
import stat

import pytest

from tasks.data import secrets as keys
from tasks.data.secrets import ENV, MissingKeyError, create_local_key, key_file, pseudonym_key


def test_the_environment_key_comes_first(monkeypatch, tmp_path):
    create_local_key(str(tmp_path))
    monkeypatch.setenv(ENV, "e" * 40)
    assert pseudonym_key(str(tmp_path)) == b"e" * 40


def test_a_short_environment_key_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV, "short")
    with pytest.raises(MissingKeyError, match="too short"):
        pseudonym_key(str(tmp_path))


def test_without_a_key_the_run_refuses_to_start_and_names_the_variable(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV, raising=False)
    with pytest.raises(MissingKeyError, match=ENV) as err:
        pseudonym_key(str(tmp_path / "store"))
    assert "sln demo" in str(err.value)


def test_the_demo_key_file_is_private_stable_and_read_when_the_variable_is_absent(
    monkeypatch, tmp_path
):
    monkeypatch.delenv(ENV, raising=False)
    store = tmp_path / "store"
    path = create_local_key(str(store))
    assert path == key_file(str(store)) == str(store / ".secrets" / "pseudonym.key")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(store / ".secrets").st_mode) == 0o700
    first = pseudonym_key(str(store))
    assert len(first) >= keys.MIN_LENGTH
    create_local_key(str(store))  # an existing key is never replaced
    assert pseudonym_key(str(store)) == first


def test_the_key_file_works_on_an_object_store(monkeypatch, s3_bucket):
    monkeypatch.delenv(ENV, raising=False)
    store = f"{s3_bucket}/store"
    create_local_key(store)
    first = pseudonym_key(store)
    create_local_key(store)
    assert pseudonym_key(store) == first and len(first) >= keys.MIN_LENGTH

"""The pure parts of runtime/security: key files, constant-time matching, header parsing, the
Secret directory's change signature across a ..data swap, token buckets, the prompt bound."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from tests.runtime.secrets_helpers import write_secret

from kubemaas_runtime.errors import StartupError
from kubemaas_runtime.security.auth import (
    KeyFileError,
    KeySet,
    KeyStore,
    load_keys,
    parse_key,
    presented_key,
)
from kubemaas_runtime.security.prompt import prompt_char_limit
from kubemaas_runtime.security.ratelimit import Limits, RateLimiter, TokenBucket
from kubemaas_runtime.security.secretdir import signature

KEY = "k" * 16


def test_parse_key() -> None:
    assert parse_key("alice", b"  abcdefghijklmnop\n") == "abcdefghijklmnop"
    for name, raw, message in (("alice", b"short", "shorter"),
                               ("alice", b"abcdefgh ijklmnopq", "spaces"),
                               ("alice", b"\xff" * 20, "ASCII"),
                               ("alice", b"a" * 5000, "over"),
                               ("../x", KEY.encode(), "must match"),
                               ("a b", KEY.encode(), "must match")):
        with pytest.raises(KeyFileError, match=message):
            parse_key(name, raw)


def test_load_keys_skips_kubelet_entries_and_refuses_duplicates(tmp_path: Path) -> None:
    write_secret(tmp_path, {"alice": b"a" * 20, "bob": b"b" * 20})
    keys = load_keys(tmp_path)
    assert sorted(keys.digests) == ["alice", "bob"]  # not ..data nor the timestamped directory
    write_secret(tmp_path, {"alice": b"a" * 20, "bob": b"a" * 20})
    with pytest.raises(KeyFileError, match="same key"):
        load_keys(tmp_path)


def test_match_is_exact_and_names_the_key() -> None:
    keys = KeySet({n: hashlib.sha256(k.encode()).digest()
                   for n, k in (("alice", "a" * 20), ("bob", "b" * 20))})
    assert keys.match("a" * 20) == "alice"
    assert keys.match("b" * 20) == "bob"
    for wrong in ("a" * 19, "a" * 21, "", "A" * 20, "a" * 20 + "\x00", "\udcff"):
        assert keys.match(wrong) is None


def test_presented_key() -> None:
    assert presented_key("Bearer abc", None) == "abc"
    assert presented_key("bearer   abc  ", None) == "abc"
    assert presented_key("Basic abc", "xyz") is None  # an Authorization we do not take
    assert presented_key("Bearer ", None) is None
    assert presented_key(None, " xyz ") == "xyz"
    assert presented_key(None, None) is None


def test_signature_changes_with_the_data_swap(tmp_path: Path) -> None:
    write_secret(tmp_path, {"tls.crt": b"one", "tls.key": b"one"})
    first = signature(tmp_path)
    assert signature(tmp_path) == first
    write_secret(tmp_path, {"tls.crt": b"two", "tls.key": b"two"})  # same sizes, new files
    assert signature(tmp_path) != first


def test_keystore_reload(tmp_path: Path) -> None:
    write_secret(tmp_path, {"alice": b"a" * 20})
    store = KeyStore(str(tmp_path))
    assert not store.refresh()
    write_secret(tmp_path, {"alice": b"c" * 20})
    assert store.refresh()
    assert store.match("c" * 20) == "alice" and store.match("a" * 20) is None
    write_secret(tmp_path, {"alice": b"bad"})
    assert not store.refresh() and store.reloads == {"ok": 1, "error": 1}
    assert store.match("c" * 20) == "alice"  # the last good keys stay
    assert not store.refresh()  # the same bad content is not re-tried (nor re-logged)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(StartupError, match="no key files"):
        KeyStore(str(empty))
    with pytest.raises(StartupError, match="api-keys-dir"):
        KeyStore(str(tmp_path / "missing"))


def test_keystore_reads_one_version_of_the_secret(tmp_path: Path) -> None:
    # the kubelet swaps ..data first, then adds the new keys' links and removes the old ones:
    # read through the links in between, a removed key's link dangles ("api keys not
    # reloaded", a reload error on a plain rotation) and an added key is not there yet
    import os

    write_secret(tmp_path, {"alice": b"a" * 20, "bob": b"b" * 20})
    store = KeyStore(str(tmp_path))
    new = tmp_path / "..2099_01_01_00_00_00.1"
    new.mkdir()
    (new / "bob").write_bytes(b"B" * 20)
    (new / "carol").write_bytes(b"c" * 20)
    os.symlink(new.name, tmp_path / "..data_tmp")
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")  # links not updated yet
    assert store.refresh() and store.reloads == {"ok": 1, "error": 0}
    assert sorted(store.keys.digests) == ["bob", "carol"]
    assert store.match("B" * 20) == "bob" and store.match("a" * 20) is None


def test_token_bucket() -> None:
    b = TokenBucket(rate=2.0, capacity=3.0, stamp=0.0)
    assert [b.try_take(1, 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert b.try_take(1, 0.0) == pytest.approx(0.5)
    assert b.try_take(1, 0.5) == 0.0  # refilled one
    assert b.try_take(1, 100.0) == 0.0 and b.level == pytest.approx(2.0)  # capped at capacity
    b.charge(10, 100.0)  # debt
    assert b.wait_positive(100.0) == pytest.approx(4.0)
    assert b.wait_positive(104.1) == 0.0
    with pytest.raises(ValueError):
        TokenBucket(rate=0, capacity=1)


def test_rate_limiter_per_key() -> None:
    rl = RateLimiter(Limits(requests_per_second=1, burst=2, tokens_per_minute=60))
    assert rl.admit("a", 0.0) is None and rl.admit("a", 0.0) is None
    refusal = rl.admit("a", 0.0)
    assert refusal is not None and refusal.limit == "requests" and refusal.retry_after_s == 1
    assert rl.admit("b", 0.0) is None  # its own bucket
    rl.charge_tokens("b", 120, 0.0)  # 60 in debt at 1 token/s
    refusal = rl.admit("b", 1.0)
    assert refusal is not None and refusal.limit == "tokens" and refusal.retry_after_s == 59
    assert rl.admit("b", 61.0) is None
    assert not Limits().enabled


def test_prompt_char_limit() -> None:
    class Tok:
        def get_vocab(self) -> dict[str, int]:
            return {"a": 0, "hello": 1, "Ġworld": 2}

    tok = Tok()
    assert prompt_char_limit(tok, 100) == 100 * 6 * 2
    assert prompt_char_limit(tok, 100) == 1200  # cached


def test_encrypted_tls_key_is_a_clear_error_not_a_prompt(tmp_path: Path) -> None:
    # OpenSSL asked for a pass phrase on the terminal: "[Errno 22] Invalid argument" without one,
    # and with one (a developer's shell, a pod with tty: true) the reload blocked the event loop
    import subprocess

    from tests.runtime.secrets_helpers import CA

    from kubemaas_runtime.security.tls import TLSFiles

    pair = CA(tmp_path / "ca").issue(1)
    plain = tmp_path / "plain.key"
    plain.write_bytes(pair["tls.key"])
    encrypted = subprocess.run(
        ["openssl", "pkey", "-in", str(plain), "-aes256", "-passout", "pass:secret"],
        check=True, capture_output=True, stdin=subprocess.DEVNULL).stdout
    write_secret(tmp_path / "tls", {"tls.crt": pair["tls.crt"], "tls.key": encrypted})
    with pytest.raises(StartupError, match=r"tls\.key is encrypted"):
        TLSFiles(str(tmp_path / "tls"))
    write_secret(tmp_path / "tls", pair)
    files = TLSFiles(str(tmp_path / "tls"))
    write_secret(tmp_path / "tls", {"tls.crt": pair["tls.crt"], "tls.key": encrypted})
    assert not files.refresh() and files.reloads == {"ok": 0, "error": 1}  # the old pair stays

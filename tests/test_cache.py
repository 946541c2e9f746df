"""sharenorm._cache: made once, read afterwards; an unusable cache only costs time."""

from __future__ import annotations

import os

from sharenorm import _cache


def test_cached_bytes_made_once_then_read(tmp_path, monkeypatch):
    monkeypatch.setenv("SHARENORM_CACHE_DIR", str(tmp_path))
    calls = []

    def make():
        calls.append(1)
        return b"data"

    assert _cache.cached_bytes("t", ["a", "1"], make) == b"data"
    assert _cache.cached_bytes("t", ["a", "1"], make) == b"data"
    assert len(calls) == 1
    assert _cache.cached_bytes("t", ["a", "2"], make) == b"data"  # another key, made again
    assert len(calls) == 2
    assert not [p for p in (tmp_path / "t").iterdir() if p.suffix == ".tmp"]


def test_invalid_cached_file_is_made_again(tmp_path, monkeypatch):
    monkeypatch.setenv("SHARENORM_CACHE_DIR", str(tmp_path))
    _cache.cached_bytes("t", ["k"], lambda: b"good")
    (path,) = (tmp_path / "t").iterdir()
    path.write_bytes(b"bad")
    assert _cache.cached_bytes("t", ["k"], lambda: b"good", lambda d: d == b"good") == b"good"
    assert path.read_bytes() == b"good"


def test_unwritable_cache_only_costs_time(tmp_path, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("a file where the cache dir would be")
    monkeypatch.setenv("SHARENORM_CACHE_DIR", str(blocked))
    assert _cache.cached_bytes("t", ["k"], lambda: b"made") == b"made"
    assert blocked.is_file()


def test_cache_dir_order(tmp_path, monkeypatch):
    monkeypatch.setenv("SHARENORM_CACHE_DIR", str(tmp_path / "a"))
    assert _cache.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("SHARENORM_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert _cache.cache_dir() == tmp_path / "x" / "sharenorm"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert _cache.cache_dir() == _cache.Path(os.path.expanduser("~")) / ".cache" / "sharenorm"

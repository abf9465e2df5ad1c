"""Hostile .keras files and Keras' errors, without Keras: a configuration that unpacks to
gigabytes, a damaged archive."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from kubemaas_runtime.backends.keras_config import MAX_CONFIG_BYTES, KerasConfigError, read_config


def test_a_config_json_bomb_is_refused_before_it_is_read(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.keras"
    with (zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf,
          zf.open("config.json", "w") as f):
        for _ in range(MAX_CONFIG_BYTES // (1 << 20) + 1):
            f.write(b" " * (1 << 20))
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(KerasConfigError, match=r"bomb.keras: its config.json unpacks to "
                                               r"68157440 bytes"):
        read_config(bomb)


def test_a_damaged_config_json_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "m.keras"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("config.json", '{"class_name": "Sequential", "config": {}}')
    raw = path.read_bytes()
    path.write_bytes(raw.replace(b"Sequential", b"Sequentia1"))  # the CRC no longer matches
    with pytest.raises(KerasConfigError, match=r"^m.keras: a damaged .keras archive: Bad "
                                               r"CRC-32"):
        read_config(path)

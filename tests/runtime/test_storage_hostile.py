"""The runtime's own directory download (storage_dir.fetch_model_dir) against listings and
servers that answer wrongly: every failure is one StartupError line, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubemaas_runtime.errors import StartupError
from kubemaas_runtime.storage_dir import fetch_model_dir

from .scripted_server import ScriptedServer, body


@pytest.mark.parametrize("name", ["a\0b", "x" * 300, ".", "a\x1bb"])
def test_names_the_disk_refuses(tmp_path: Path, name: str) -> None:
    with ScriptedServer() as server:
        server.routes["/m/index.json"] = body(json.dumps([name]).encode())
        server.routes["*"] = body(b"x")
        with pytest.raises(StartupError, match="unsafe file path"):
            fetch_model_dir(f"{server.url}/m/", str(tmp_path), timeout_s=5)

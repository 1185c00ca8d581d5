"""Every test runs in its own temp dir with its own state dir and no keys from the environment."""

import pytest


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("DYNALIGN_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("DYNALIGN_API_KEY", raising=False)
    monkeypatch.delenv("DYNALIGN_ADMIN_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path

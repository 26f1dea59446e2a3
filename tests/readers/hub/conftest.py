"""The hub server and huggingface_hub pointed at it.

huggingface_hub reads ``HF_ENDPOINT``, ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` when it is
imported (into ``huggingface_hub.constants``), so the ``hub`` fixture sets the environment AND
patches the constants; the token comes from ``HF_TOKEN`` or the token file, both emptied here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.readers.hub.server import HubServer


@pytest.fixture(scope="session")
def hub_server() -> Iterator[HubServer]:
    server = HubServer()
    server.start()
    yield server
    server.stop()


def configure_hub(monkeypatch: pytest.MonkeyPatch, url: str, cache: Path, token_file: Path) -> None:
    """Point huggingface_hub (env and already-imported constants) at ``url``."""
    from huggingface_hub import constants

    from ckptdiff.readers.hub import transport as remote

    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("CKPTDIFF_ALLOW_DOWNLOAD", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(token_file))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(token_file) + "s")
    monkeypatch.setattr(remote, "BACKOFF_SECONDS", 0.01)


@pytest.fixture
def hub(hub_server: HubServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> HubServer:
    """The server, its counters reset, with huggingface_hub configured to use it."""
    configure_hub(monkeypatch, hub_server.url, tmp_path / "hf-cache", tmp_path / "hf-token")
    hub_server.reset()
    return hub_server


def set_offline(monkeypatch: pytest.MonkeyPatch, offline: bool = True) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1" if offline else "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)


def set_token(monkeypatch: pytest.MonkeyPatch, token: str) -> None:
    monkeypatch.setenv("HF_TOKEN", token)

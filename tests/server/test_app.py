"""The app factory: the lifespan starts the engine client and shuts it down."""
from __future__ import annotations

import httpx

from tests.server.fake_engine import FakeEngineClient
from tests.server.helpers import live_server


def test_lifespan_starts_and_stops_the_engine():
    engine = FakeEngineClient()
    with live_server(engine) as srv:
        assert engine.started and not engine.stopped
        assert httpx.get(srv.url + "/health").status_code == 200
    assert engine.stopped

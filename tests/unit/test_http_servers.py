"""uvicorn serves the gateway and the Prefect server (`uvicorn.run` with its `auto` loop and HTTP protocol) on
uvloop and httptools, but only if they can be imported: a dependency dropped from pyproject.toml would cost the
Prefect server 12-17% more CPU per saga without any error (BENCHMARKS.md)."""

import sys

import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def test_uvicorn_parses_http_with_httptools():
    config = uvicorn.Config(app=lambda scope, receive, send: None)
    config.load()

    assert config.http_protocol_class is HttpToolsProtocol


@pytest.mark.skipif(sys.platform == "win32", reason="uvloop does not run on Windows; uvicorn uses asyncio there")
def test_uvicorn_runs_on_uvloop():
    import uvloop

    config = uvicorn.Config(app=lambda scope, receive, send: None)
    loop = config.get_loop_factory()()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()

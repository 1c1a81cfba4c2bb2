"""The GraphiQL page and its files, all served by the gateway (the browser test drives them: tests/e2e)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from fulfillment.settings import Settings
from gateway import graphiql
from gateway.app import create_app

needs_the_files = pytest.mark.skipif(graphiql.STYLESHEET.url() is None,
                                     reason="GraphiQL's files are not installed: make graphiql (needs npm)")
REFERENCE = re.compile(r'(?:src|href)="([^"]*)"')


def make_app(tmp_path, **options):
    return create_app(Settings(data_dir=tmp_path, prefect_api_url="http://127.0.0.1:9/api", **options))


@pytest.fixture
def client(tmp_path) -> Iterator[TestClient]:
    with TestClient(make_app(tmp_path)) as client:
        yield client


def page_references(client: TestClient) -> list[str]:
    page = client.get("/graphql", headers={"Accept": "text/html"})
    assert page.status_code == 200
    return REFERENCE.findall(page.text)


@needs_the_files
def test_the_page_loads_only_files_of_the_gateway(client):
    references = page_references(client)

    assert len(references) == 5  # the icon, GraphiQL's stylesheet, React, ReactDOM and GraphiQL
    assert [url for url in references if not url.startswith("/graphql/assets/") and url != "data:,"] == []


@needs_the_files
def test_each_file_is_served_to_be_cached_for_good(client):
    for url in page_references(client):
        if url.startswith("/graphql/assets/"):
            response = client.get(url)
            assert response.status_code == 200, url
            assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
            assert response.headers["content-type"].startswith(("text/javascript", "text/css")), url


@needs_the_files
def test_a_file_is_found_under_its_installed_version_only(client):
    current = graphiql.STYLESHEET.url()
    stale = re.sub(r"@[^/]+/", "@0.0.1/", current)

    assert client.get(current).status_code == 200
    assert client.get(stale).status_code == 404
    assert client.get("/graphql/assets/graphiql@4.1.2/package.json").status_code == 404
    assert client.get("/graphql/assets/../../app.py").status_code == 404


@needs_the_files
def test_the_files_are_not_served_when_graphiql_is_off(tmp_path):
    with TestClient(make_app(tmp_path, graphiql=False)) as client:
        assert client.get(graphiql.STYLESHEET.url()).status_code == 404


def test_before_npm_ci_the_page_says_how_to_install_the_files(tmp_path):
    page = graphiql.page(node_modules=tmp_path).body.decode()

    assert "not installed" in page and "make graphiql" in page and "<script" not in page


@needs_the_files
def test_the_page_and_its_files_need_no_credentials_when_queries_do(tmp_path):
    with TestClient(make_app(tmp_path, api_keys=["key-one-0123456789"])) as client:
        assert client.get("/graphql", headers={"Accept": "text/html"}).status_code == 200
        assert client.get(graphiql.STYLESHEET.url()).status_code == 200
        assert client.post("/graphql", json={"query": "{ __typename }"}).status_code == 401

"""Schemathesis against the REST routes, loaded from the app's own `/openapi.json`: no answer is a 5xx, and each
answer has a status and a body the document declares."""

from __future__ import annotations

import tempfile

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from tests.fuzz.conftest import FUZZ_SETTINGS, WEBHOOK_KEY, fuzz_app, tally

CHECKS = [schemathesis.checks.not_a_server_error, status_code_conformance, response_schema_conformance]

# Loaded at import, as `@schema.parametrize()` needs it (`schemathesis.pytest.from_fixture` fails on pytest 9.2).
DOCUMENT_DIR = tempfile.TemporaryDirectory(prefix="fuzz-openapi-")
schema = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app(DOCUMENT_DIR.name))


@pytest.fixture(scope="module", autouse=True)
def remove_the_document_dir():
    yield
    DOCUMENT_DIR.cleanup()


@pytest.fixture
def app(tmp_path):
    """An app per operation: schemathesis ends an app's lifespan, which closes its store, after each test."""
    return fuzz_app(tmp_path)


@schema.parametrize()
@settings(FUZZ_SETTINGS,
          suppress_health_check=[HealthCheck.function_scoped_fixture, *FUZZ_SETTINGS.suppress_health_check])
def test_no_rest_route_answers_5xx_or_off_its_document(case, app):
    response = case.call(app=app, headers={"aeg-sas-key": WEBHOOK_KEY})
    tally("REST (schemathesis, /openapi.json)").record(response.status_code)
    case.validate_response(response, checks=CHECKS)

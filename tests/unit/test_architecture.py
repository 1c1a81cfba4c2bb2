"""The import direction of the layers: domain <- service <- adapters / entry points (see STYLE.md)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENTRY_POINTS = ("gateway", "flows", "deployments", "benchmarks")
AZURE_AND_FRAMEWORKS = ("azure", "prefect", "starlette", "strawberry", "uvicorn", "httpx", "opentelemetry",
                        "prometheus_client", "pydantic")


def imported_modules(package: str) -> dict[Path, set[str]]:
    modules = {}
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        names |= {node.module for node in ast.walk(tree)
                  if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}
        modules[path.relative_to(ROOT)] = names
    return modules


def offending(package: str, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(f"{path}: {name}" for path, names in imported_modules(package).items() for name in names
                  if name.split(".")[0] in forbidden or name.startswith(forbidden))


def test_the_domain_is_plain_python():
    allowed = set(sys.stdlib_module_names) | {"fulfillment"}
    assert [f"{path}: {name}" for path, names in imported_modules("fulfillment/domain").items()
            for name in names if name.split(".")[0] not in allowed or name.startswith("fulfillment.")
            and not name.startswith("fulfillment.domain")] == []


def test_the_core_never_imports_an_entry_point():
    assert offending("fulfillment", ENTRY_POINTS) == []


@pytest.mark.parametrize("layer", ["fulfillment/domain", "fulfillment/service"])
def test_only_adapters_reach_azure_and_the_frameworks(layer):
    allowed_in_service = ("pydantic", "opentelemetry", "prometheus_client")  # validation and telemetry
    forbidden = tuple(name for name in AZURE_AND_FRAMEWORKS if layer.endswith("domain") or
                      name not in allowed_in_service)
    assert offending(layer, forbidden) == []


def test_the_service_layer_does_not_know_the_adapters():
    assert offending("fulfillment/service", ("fulfillment.adapters", "fulfillment.bootstrap")) == []

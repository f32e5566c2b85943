"""docs/openapi.yaml describes exactly the routes the registry's REST API serves.

The fuzz test (tests/compat/test_fuzz.py) generates its requests from that file, so a
route missing from it would go unfuzzed, and one that no longer exists would fuzz 404s.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import schemathesis
import yaml
from flotilla_registry.rest import make_app

ROOT = Path(__file__).resolve().parents[2]
OPENAPI = ROOT / "docs" / "openapi.yaml"
METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}


def _served() -> set[tuple[str, str]]:
    app = make_app(service=None, identity_key="unused")  # type: ignore[arg-type]
    routes = set()
    for route in app.router.routes():
        if route.method == "HEAD":  # aiohttp adds one for every GET
            continue
        routes.add((route.method, route.resource.canonical))  # type: ignore[union-attr]
    return routes


def _described() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(OPENAPI.read_text())
    return data


def test_openapi_is_a_valid_openapi_3_document() -> None:
    schema = schemathesis.openapi.from_path(OPENAPI)
    schema.validate()  # raises on anything the OpenAPI 3.0 meta-schema refuses
    assert _described()["openapi"].startswith("3.0")


def test_openapi_describes_every_served_route() -> None:
    described = {
        (method.upper(), path)
        for path, item in _described()["paths"].items()
        for method in item
        if method in METHODS
    }
    assert described == _served()


def test_path_parameters_match_the_router() -> None:
    """The cluster-name pattern in the description is the router's."""
    pattern = _described()["components"]["schemas"]["ClusterName"]["pattern"]
    app = make_app(service=None, identity_key="unused")  # type: ignore[arg-type]
    regexes = set()
    for route in app.router.routes():
        info = route.resource.get_info()  # type: ignore[union-attr]
        if "pattern" in info:  # dynamic routes: (?P<name>...) in the compiled path
            regexes.add(re.search(r"\(\?P<name>(.*?)\)", info["pattern"].pattern).group(1))
    assert regexes == {pattern.removeprefix("^").removesuffix("$")}


def test_error_responses_are_json_errors() -> None:
    spec = _described()
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method not in METHODS:
                continue
            for code, response in operation["responses"].items():
                if int(code) < 400 or path == "/api/health":
                    continue
                ref = response["$ref"].rsplit("/", 1)[-1]
                body = spec["components"]["responses"][ref]["content"]["application/json"]
                assert body["schema"] == {"$ref": "#/components/schemas/Error"}, (path, code)

"""``/docs/openapi.json`` describes what the server really answers: a valid OpenAPI
document (openapi-spec-validator), a schema for every request and response body, the
real status codes with xserve's error body, bearer security on every route that needs a
key, and schemathesis's checks against a real server with API keys."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
from openapi_spec_validator import validate
from schemathesis.checks import not_a_server_error
from schemathesis.runner import events
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.server import Server, copy_demo_models, running_server
from xserve.security.keys import add_key

MODEL, VERSION = "credit-risk", "1"
ERROR_REF = "#/components/schemas/ErrorBody"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    """A server with API keys, and an admin key."""
    root = tmp_path_factory.mktemp("openapi")
    keys = root / "keys.txt"
    admin = add_key(keys, "schemathesis", "admin")
    models = copy_demo_models(root / "models", [MODEL, "iris"])
    with running_server(models, env={"XSERVE_API_KEYS": str(keys)}) as server:
        yield server, admin


@pytest.fixture(scope="module")
def doc(keyed: tuple[Server, str]) -> dict[str, Any]:
    server, _ = keyed
    answer = httpx.get(f"{server.url}/docs/openapi.json", timeout=30)  # needs no key
    assert answer.status_code == 200
    return answer.json()  # type: ignore[no-any-return]


def _operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            yield method, path, operation


def test_the_document_is_valid_openapi(doc: dict[str, Any]) -> None:
    validate(doc)
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key from `xserve keys add`",
    }


def test_every_body_has_a_schema_and_every_error_xserves_shape(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    assert {"PredictRequest", "ExplainRequest", "InferRequest", "Answer", "JobTicket"} <= set(
        schemas
    )
    for method, path, operation in _operations(doc):
        where = f"{method.upper()} {path}"
        for status, response in operation["responses"].items():
            schema = response["content"]["application/json"]["schema"]
            assert schema not in ({}, None), f"{where} {status}: no schema"
            if int(status) >= 400 and not path.endswith("/health/ready"):  # {"ready": false}
                refs = [schema, *schema.get("oneOf", [])]  # outcomes' 422 may name refusals
                assert {"$ref": ERROR_REF} in refs, f"{where} {status}: {schema}"
            assert not 500 <= int(status) != 503, f"{where}: declares a server fault"
        if method == "post":
            body = operation["requestBody"]["content"]["application/json"]
            assert body["schema"]["$ref"].startswith("#/components/schemas/"), where
            assert isinstance(body["example"], dict) and body["example"], where


def test_real_status_codes(doc: dict[str, Any]) -> None:
    explain = doc["paths"]["/v1/models/{model}/explain"]["post"]["responses"]
    assert {"200", "202"} <= set(explain) and "201" not in explain
    assert explain["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/Answer")
    assert explain["202"]["content"]["application/json"]["schema"]["$ref"].endswith("/JobTicket")
    infer = doc["paths"]["/v2/models/{model}/infer"]["post"]
    assert "application/octet-stream" in infer["requestBody"]["content"]
    assert "application/octet-stream" in infer["responses"]["200"]["content"]
    for method, path, operation in _operations(doc):
        if method == "post":  # a body xserve reads: each way it can be refused
            assert {"400", "408", "413", "415", "422"} <= set(operation["responses"]), path


def test_security_is_declared_where_the_server_asks_for_a_key(
    keyed: tuple[Server, str], doc: dict[str, Any]
) -> None:
    """Each route answers 401 without a key exactly when the document says it needs one."""
    server, _ = keyed
    values = {"{model}": MODEL, "{version}": VERSION, "{job_id}": "nope"}
    with server.client() as c:
        for method, path, operation in _operations(doc):
            url = path
            for name, value in values.items():
                url = url.replace(name, value)
            answer = c.request(method, url, json={"instances": [[0]]})
            secured = operation.get("security") == [{"bearer": []}]
            assert (answer.status_code == 401) == secured, f"{method} {path}: {answer.status_code}"
            assert secured or path.endswith(("/health/live", "/health/ready")), path


def _run(schema: Any, admin: str) -> tuple[int, int, Counter[int], list[str]]:
    """schemathesis over every operation: (operations, cases, statuses, failures)."""
    runner = schemathesis.runner.from_schema(
        schema,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
            response_headers_conformance,
            ignored_auth,
        ],
        headers={"Authorization": f"Bearer {admin}"},
        hypothesis_settings=hypothesis.settings(
            max_examples=4,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(hypothesis.HealthCheck),
        ),
        store_interactions=True,
        request_timeout=20_000,
    )
    operations, statuses, failures = 0, Counter[int](), []
    for event in runner.execute():
        if isinstance(event, events.InternalError):
            failures.append(f"schemathesis: {event.message}")
        if not isinstance(event, events.AfterExecution):
            continue
        operations += 1
        result = event.result
        statuses.update(i.response.status_code for i in result.interactions if i.response)
        failures += [
            f"{event.verbose_name}: {check.name}: {check.message}"
            for check in result.checks
            if check.value.name != "success"
        ]
        failures += [f"{event.verbose_name}: {e.exception}" for e in result.errors]
    return operations, sum(statuses.values()), statuses, failures


def test_schemathesis_finds_nothing(keyed: tuple[Server, str], doc: dict[str, Any]) -> None:
    """Generated requests against every operation, twice: with generated path parameters
    (unknown models, jobs: the 404 paths) and with a real model and version (the bodies'
    refusals and answers). Response schemas, status codes, content types, headers, the
    auth each route declares; no 5xx."""
    server, admin = keyed
    schemathesis.experimental.OPEN_API_3_1.enable()  # Litestar writes OpenAPI 3.1
    started = time.monotonic()
    generated = schemathesis.from_dict(doc, base_url=server.url)
    real = schemathesis.from_dict(doc, base_url=server.url)

    @real.hook  # type: ignore[misc]
    def map_path_parameters(_: Any, path_parameters: dict[str, Any] | None) -> Any:
        for name, value in (("model", MODEL), ("version", VERSION)):
            if path_parameters and name in path_parameters:
                path_parameters[name] = value
        return path_parameters

    operations = len(list(_operations(doc)))
    totals: Counter[int] = Counter()
    for schema in (generated, real):
        ran, _, statuses, failures = _run(schema, admin)
        assert failures == [], "\n".join(failures)
        assert ran == operations
        totals += statuses
    elapsed = time.monotonic() - started
    server_errors = sum(n for status, n in totals.items() if status >= 500)
    print(
        f"schemathesis: {operations} operations, {sum(totals.values())} cases, "
        f"{server_errors} 5xx, statuses {dict(sorted(totals.items()))}, {elapsed:.1f} s"
    )
    assert server_errors == 0
    assert totals[200] and totals[404] and totals[422]  # answers, unknown models, refusals

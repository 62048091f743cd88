"""API keys and roles: the key ring, `xserve keys add`, and every endpoint over HTTP."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from litestar import Litestar, get, post
from litestar.di import Provide
from litestar.testing import TestClient
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from tests.server import Server, copy_demo_models, running_server
from xserve.api.auth import PUBLIC_OPT, KeyAuthentication, caller_of, requires, role_guard
from xserve.api.errors import exception_handlers
from xserve.cli import main
from xserve.security import keys as auth
from xserve.security.keys import KeyFileError, KeyRing, Principal, add_key, key_digest, parse_keys

ROW = [35, 52000, 0.31, 0.45, 4, 0, 30, 12000]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# -- the key ring --------------------------------------------------------------------------


def test_keys_file_lines_parse_and_admin_implies_every_role(tmp_path: Path) -> None:
    path = tmp_path / "keys.txt"
    path.write_text(
        f"# staff\n\nalice predict,explain {key_digest('k1')}\n"
        f"root admin SHA256:{key_digest('k2')[7:].upper()}\n"
    )
    ring = KeyRing(path)
    alice, root = ring.authenticate("k1"), ring.authenticate("k2")
    assert alice == Principal("alice", frozenset({"predict", "explain"}))
    assert alice.allows("predict") and alice.allows(None) and not alice.allows("audit")
    assert root is not None and root.name == "root"
    assert all(root.allows(r) for r in auth.ROLES)
    assert ring.authenticate("k3") is None and ring.authenticate("") is None
    assert ring.authenticate(None) is None


@pytest.mark.parametrize(
    "line, message",
    [
        ("alice predict", "expected '<name>"),
        ("alice predict sha256:abc", "64 hex digits"),
        (f"alice predict md5:{'0' * 64}", "64 hex digits"),
        (f"alice superuser {key_digest('x')}", "unknown roles ['superuser']"),
    ],
)
def test_malformed_lines_are_refused_naming_file_and_line(line: str, message: str) -> None:
    with pytest.raises(KeyFileError, match=re.escape(message)) as err:
        parse_keys(f"# ok\n{line}\n", "keys.txt")
    assert "keys.txt:2" in str(err.value)


def test_missing_keys_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError):
        KeyRing(tmp_path / "absent.txt")


def test_keys_file_changes_apply_without_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth, "RECHECK_SECONDS", 0.0)
    path = tmp_path / "keys.txt"
    first = add_key(path, "alice", "predict")
    ring = KeyRing(path)
    second = add_key(path, "bob", "audit")
    bob = ring.authenticate(second)
    assert bob is not None and bob.name == "bob" and ring.authenticate(first) is not None
    path.write_text(path.read_text() + "garbage line\n")
    assert ring.authenticate(first) is None  # a broken file denies every key: fail closed


def test_cli_keys_add_prints_the_key_once_and_stores_its_digest(tmp_path: Path) -> None:
    path = tmp_path / "keys.txt"
    result = CliRunner().invoke(
        main, ["keys", "add", "svc-loans", "--roles", "predict,explain", "--file", str(path)]
    )
    assert result.exit_code == 0, result.output
    key = result.stdout.strip().splitlines()[-1]
    assert len(key) >= 40
    text = path.read_text()
    assert key not in text
    assert text == f"svc-loans explain,predict {key_digest(key)}\n"
    principal = KeyRing(path).authenticate(key)
    assert principal is not None and principal.name == "svc-loans"
    bad = CliRunner().invoke(main, ["keys", "add", "x", "--roles", "god", "--file", str(path)])
    assert bad.exit_code != 0 and "unknown roles" in bad.output


# -- the middleware and the role guards, in process -----------------------------------------


def _app(keys: KeyRing | None, seen: list[int]) -> Litestar:
    """Routes as the API declares them: public, any key, one role; and a middleware outside
    the key middleware that records every status it sees go out (as the metrics one does)."""

    def recording(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            async def note(message: Message) -> None:
                if message["type"] == "http.response.start":
                    seen.append(message["status"])
                await send(message)

            await app(scope, receive, note)

        return middleware

    @get("/open", opt=PUBLIC_OPT, sync_to_thread=False)
    def open_route() -> str:
        return "open"

    @get("/any", sync_to_thread=False)
    def any_key(caller: str | None) -> dict[str, str | None]:
        return {"caller": caller}

    @post("/audit", opt=requires("audit"), status_code=200, sync_to_thread=False)
    def audit_route(caller: str | None) -> dict[str, str | None]:
        return {"caller": caller}

    @get("/odd", opt={"public": True, **requires("audit")}, sync_to_thread=False)
    def public_yet_guarded() -> str:
        return "odd"

    return Litestar(
        [open_route, any_key, audit_route, public_yet_guarded],
        middleware=[recording, *([KeyAuthentication(keys)] if keys else [])],
        guards=[role_guard] if keys else [],
        dependencies={"caller": Provide(caller_of, sync_to_thread=False)},
        exception_handlers=exception_handlers,
    )


@pytest.fixture
def ring(tmp_path: Path) -> tuple[KeyRing, dict[str, str]]:
    path = tmp_path / "keys.txt"
    keys = {role: add_key(path, f"{role}-user", role) for role in ("predict", "audit", "admin")}
    return KeyRing(path), keys


def test_the_middleware_answers_401_before_any_handler(
    ring: tuple[KeyRing, dict[str, str]],
) -> None:
    seen: list[int] = []
    with TestClient(_app(ring[0], seen)) as c:
        for path, method in (("/any", "GET"), ("/audit", "POST"), ("/any", "OPTIONS")):
            missing = c.request(method, path)
            assert missing.status_code == 401
            assert missing.json() == {
                "error": "an API key is required: 'Authorization: Bearer <key>'",
                "code": "unauthenticated",
            }
            assert missing.headers["www-authenticate"] == 'Bearer realm="xserve"'
            for header in ("Bearer nope", "Basic YTpi", "Bearer ", "Bearer"):
                r = c.request(method, path, headers={"Authorization": header})
                assert r.status_code == 401, header
            assert c.request(method, path, headers=bearer("nope")).json() == {
                "error": "the API key is not valid",
                "code": "unauthenticated",
            }
    assert seen and set(seen) == {401}  # answered inside the outer middleware: counted


def test_public_routes_need_no_key(ring: tuple[KeyRing, dict[str, str]]) -> None:
    with TestClient(_app(ring[0], [])) as c:
        assert c.get("/open").text == "open"
        assert c.get("/open", headers=bearer("nope")).status_code == 200
        assert c.options("/open").status_code == 204
        # Public yet needing a role is a contradiction: refused, not opened.
        assert c.get("/odd").status_code == 401


def test_roles_are_checked_by_the_guard_on_the_route(
    ring: tuple[KeyRing, dict[str, str]],
) -> None:
    _, keys = ring
    with TestClient(_app(ring[0], [])) as c:
        for who in ("predict", "audit", "admin"):
            assert c.get("/any", headers=bearer(keys[who])).json() == {"caller": f"{who}-user"}
        r = c.post("/audit", headers=bearer(keys["predict"]))
        assert r.status_code == 403
        assert r.json() == {
            "error": "caller 'predict-user' does not have the 'audit' role",
            "code": "forbidden",
        }
        for who in ("audit", "admin"):  # admin holds every role
            r = c.post("/audit", headers=bearer(keys[who]))
            assert r.status_code == 200 and r.json() == {"caller": f"{who}-user"}


def test_without_keys_every_route_is_open() -> None:
    with TestClient(_app(None, [])) as c:
        assert c.get("/any").json() == {"caller": None}
        assert c.post("/audit").json() == {"caller": None}
        assert c.get("/open").status_code == 200


def test_an_unknown_role_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown role 'superuser'"):
        requires("superuser")


# -- over HTTP -------------------------------------------------------------------------------

ROLE_KEYS = ("predict", "explain", "audit", "admin")


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, str]]]:
    root = copy_demo_models(tmp_path_factory.mktemp("repo") / "models")
    keys_file = root.parent / "keys.txt"
    keys = {role: add_key(keys_file, f"{role}-user", role) for role in ROLE_KEYS}
    with running_server(root, env={"XSERVE_API_KEYS": str(keys_file)}) as server:
        yield server, keys


V2_BODY = {
    "inputs": [
        {"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}
    ]
}
ONE = {"instances": [ROW]}
NO_JOB = f"/v1/jobs/{'a' * 32}"
# method, path, body, the role it needs (None: any key), the status a caller allowed gets
ENDPOINTS: list[tuple[str, str, Any, str | tuple[str, ...] | None, int]] = [
    ("GET", "/v1/models", None, None, 200),
    ("GET", "/v1/models/credit-risk", None, None, 200),
    ("GET", "/v1/models/credit-risk/versions/1", None, None, 200),
    ("POST", "/v1/models/credit-risk/predict", ONE, "predict", 200),
    ("POST", "/v1/models/credit-risk/versions/1/predict", ONE, "predict", 200),
    ("GET", "/v1/models/credit-risk/drift", None, None, 200),
    ("GET", "/v1/models/credit-risk/versions/1/drift", None, None, 200),
    ("POST", "/v1/models/credit-risk/explain", ONE, "explain", 200),
    ("POST", "/v1/models/credit-risk/versions/1/explain", ONE, "explain", 200),
    ("GET", NO_JOB, None, ("explain", "audit"), 404),
    ("GET", "/v1/cache/stats", None, None, 200),
    ("GET", "/v2", None, None, 200),
    ("GET", "/v2/models/iris", None, None, 200),
    ("GET", "/v2/models/iris/versions/1/ready", None, None, 200),
    ("POST", "/v2/models/iris/infer", V2_BODY, "predict", 200),
    ("POST", "/v2/models/iris/versions/1/infer", V2_BODY, "predict", 200),
    ("GET", "/v1/audit/records", None, "audit", 200),
    ("GET", "/v1/audit/verify", None, "audit", 200),
]
PUBLIC_PATHS = ("/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready")


@pytest.mark.parametrize("method, path, body, role, ok", ENDPOINTS)
def test_every_endpoint_needs_a_key_and_its_role(
    secured: tuple[Server, dict[str, str]],
    method: str,
    path: str,
    body: Any,
    role: str | tuple[str, ...] | None,
    ok: int,
) -> None:
    server, keys = secured
    roles = (role,) if isinstance(role, str) else role
    with server.client() as c:

        def call(key: str | None) -> Any:
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            return c.request(method, path, json=body, headers=headers)

        for r in (call(None), call("not-a-key"), call(keys["predict"] + "x")):
            assert r.status_code == 401, (path, r.text)
            assert r.json()["code"] == "unauthenticated"
            assert r.headers["www-authenticate"].startswith("Bearer")
        basic = c.request(method, path, json=body, headers={"Authorization": "Basic YTpi"})
        assert basic.status_code == 401
        for who in ROLE_KEYS:
            r = call(keys[who])
            allowed = roles is None or who in (*roles, "admin")
            if allowed:
                assert r.status_code == ok, (path, who, r.text)
            else:
                assert r.status_code == 403, (path, who, r.text)
                assert roles is not None
                needed = (
                    f"the '{roles[0]}' role"
                    if len(roles) == 1
                    else f"any of the roles {list(roles)}"
                )
                assert r.json() == {
                    "error": f"caller '{who}-user' does not have {needed}",
                    "code": "forbidden",
                }


def test_every_route_in_the_api_is_guarded(secured: tuple[Server, dict[str, str]]) -> None:
    """Whatever routes exist (others may be added), each one refuses a caller without a key,
    but health, metrics and docs."""
    server, _ = secured
    with server.client() as c:
        schema = c.get("/docs/openapi.json")
        assert schema.status_code == 200
        paths = schema.json()["paths"]
        assert len(paths) >= 10
        for template, methods in paths.items():
            path = re.sub(
                r"\{(\w+)\}",
                lambda m: {"model": "iris", "version": "1"}.get(m.group(1), "x"),
                template,
            )
            for method in [*methods, "options"]:
                r = c.request(method.upper(), path, json={})
                if path in PUBLIC_PATHS:
                    assert r.status_code in (200, 204), (method, path, r.status_code)
                else:
                    assert r.status_code == 401, (method, path, r.status_code)
        assert set(PUBLIC_PATHS) <= set(paths)
        for path in ("/metrics", "/docs", "/docs/openapi.json", "/docs/swagger"):
            assert c.get(path).status_code == 200, path


def test_keys_added_to_the_file_work_without_a_restart(
    secured: tuple[Server, dict[str, str]],
) -> None:
    server, _ = secured
    key = add_key(server.models_dir.parent / "keys.txt", "late-user", "audit")
    with server.client() as c:
        deadline = time.monotonic() + 10  # the file is checked for changes every second
        while (r := c.get("/v1/audit/verify", headers=bearer(key))).status_code == 401:
            assert time.monotonic() < deadline, r.text
            time.sleep(0.2)
        assert r.status_code == 200
        r = c.post("/v1/models/credit-risk/predict", json=ONE, headers=bearer(key))
        assert r.json()["error"] == "caller 'late-user' does not have the 'predict' role"


def test_the_caller_is_recorded(secured: tuple[Server, dict[str, str]]) -> None:
    server, keys = secured
    with server.client() as c:
        answer = c.post(
            "/v1/models/credit-risk/predict",
            json={"instances": [ROW]},
            headers={"Authorization": f"Bearer {keys['admin']}"},
        ).json()
        found = c.get(
            "/v1/audit/records",
            params={"request_id": answer["request_id"]},
            headers={"Authorization": f"Bearer {keys['audit']}"},
        ).json()
    assert [r["caller"] for r in found["records"]] == ["admin-user"]


def test_open_server_warns_loudly(server: Server) -> None:
    with server.client() as c:
        r = c.post("/v1/models/credit-risk/predict", json={"instances": [ROW]})
        assert r.status_code == 200
        records = c.get("/v1/audit/records", params={"request_id": r.json()["request_id"]})
    assert [x["caller"] for x in records.json()["records"]] == [None]
    assert "NO API KEYS CONFIGURED" in server.log.read_text()


def test_a_missing_keys_file_stops_the_server(tmp_path: Path) -> None:
    root = copy_demo_models(tmp_path / "models")
    with (
        pytest.raises(RuntimeError, match="exited early"),
        running_server(root, env={"XSERVE_API_KEYS": str(tmp_path / "absent.txt")}),
    ):
        pass  # pragma: no cover - the server must not start

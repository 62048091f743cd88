"""API keys and roles: the key ring, `xserve keys add`, and every endpoint over HTTP."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.server import Server, copy_demo_models, running_server
from xserve.security import keys as auth
from xserve.api.auth import PUBLIC, required_role
from xserve.cli.main import main
from xserve.security.keys import KeyFileError, KeyRing, Principal, add_key, key_digest, parse_keys

ROW = [35, 52000, 0.31, 0.45, 4, 0, 30, 12000]


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


def test_route_roles() -> None:
    assert required_role("GET", "/health/ready") == PUBLIC
    assert required_role("GET", "/v2/health/live") == PUBLIC
    assert required_role("GET", "/metrics") == PUBLIC
    assert required_role("GET", "/docs/openapi.json") == PUBLIC
    assert required_role("POST", "/v1/models/m/predict") == "predict"
    assert required_role("POST", "/v1/models/m/versions/2/predict") == "predict"
    assert required_role("POST", "/v2/models/m/versions/2/infer") == "predict"
    assert required_role("POST", "/v1/models/m/explain") == "explain"
    assert required_role("GET", "/v1/jobs/abc") == "explain"
    assert required_role("GET", "/v1/audit/records") == "audit"
    assert required_role("GET", "/v1/models/predict") is None  # a model named "predict"
    assert required_role("GET", "/v1/models") is None
    assert required_role("GET", "/healthz") is None


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
ENDPOINTS: list[tuple[str, str, Any, str | None]] = [
    ("GET", "/v1/models", None, None),
    ("GET", "/v1/models/credit-risk", None, None),
    ("GET", "/v1/models/credit-risk/versions/1", None, None),
    ("POST", "/v1/models/credit-risk/predict", {"instances": [ROW]}, "predict"),
    ("POST", "/v1/models/credit-risk/versions/1/predict", {"instances": [ROW]}, "predict"),
    ("GET", "/v2", None, None),
    ("GET", "/v2/models/iris", None, None),
    ("GET", "/v2/models/iris/versions/1/ready", None, None),
    ("POST", "/v2/models/iris/infer", V2_BODY, "predict"),
    ("POST", "/v2/models/iris/versions/1/infer", V2_BODY, "predict"),
    ("GET", "/v1/audit/records", None, "audit"),
    ("GET", "/v1/audit/verify", None, "audit"),
]


@pytest.mark.parametrize("method, path, body, role", ENDPOINTS)
def test_every_endpoint_needs_a_key_and_its_role(
    secured: tuple[Server, dict[str, str]], method: str, path: str, body: Any, role: str | None
) -> None:
    server, keys = secured
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
            allowed = role is None or who in (role, "admin")
            if allowed:
                assert r.status_code == 200, (path, who, r.text)
            else:
                assert r.status_code == 403, (path, who, r.text)
                assert r.json() == {
                    "error": f"caller '{who}-user' does not have the '{role}' role",
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
            for method in methods:
                r = c.request(method.upper(), path, json={})
                if required_role(method.upper(), path) == PUBLIC:
                    assert r.status_code != 401, (method, path)
                else:
                    assert r.status_code == 401, (method, path, r.status_code)
        for path in ("/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready"):
            assert c.get(path).status_code == 200


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

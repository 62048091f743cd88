"""The audit log through a real server: one record per decision, redaction, queries, verify."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.audit_support import execute
from tests.server import Server, copy_demo_models, running_server
from xserve.security.keys import add_key

pytestmark = pytest.mark.http

DIGEST_KEY = "pepper-for-tests"
ROW = {
    "age": 35,
    "annual_income": 52000,
    "debt_to_income": 0.31,
    "credit_utilization": 0.45,
    "num_open_accounts": 4,
    "delinquencies_2y": 0,
    "months_employed": 30,
    "loan_amount": 12000,
}
IRIS = [[5.1, 3.5, 1.4, 0.2]]


class Audited:
    def __init__(self, server: Server, url: str, keys: dict[str, str]) -> None:
        self.server, self.url, self.keys = server, url, keys

    def client(self, who: str) -> httpx.Client:
        c = self.server.client()
        c.headers["Authorization"] = f"Bearer {self.keys[who]}"
        return c

    def records(self, **params: Any) -> list[dict[str, Any]]:
        with self.client("auditor") as c:
            r = c.get("/v1/audit/records", params={"limit": 1000, **params})
        assert r.status_code == 200, r.text
        return r.json()["records"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Audited]:
    root = copy_demo_models(tmp_path_factory.mktemp("repo") / "models")
    manifest_path = root / "credit-risk" / "1" / "xserve.yaml"
    manifest = yaml.safe_load(manifest_path.read_text())
    for f in manifest["features"]:
        f["personal"] = f["name"] == "age"
    manifest_path.write_text(yaml.safe_dump(manifest))
    keys_file = root.parent / "keys.txt"
    keys = {
        "alice": add_key(keys_file, "alice", "predict,explain"),
        "auditor": add_key(keys_file, "auditor", "audit"),
        "bob": add_key(keys_file, "bob", "explain"),
    }
    url = f"sqlite:///{root.parent / 'audit' / 'audit.db'}"
    env = {
        "XSERVE_API_KEYS": str(keys_file),
        "XSERVE_AUDIT_URL": url,
        "XSERVE_AUDIT_DIGEST_KEY": DIGEST_KEY,
    }
    with running_server(root, env=env) as server:
        yield Audited(server, url, keys)


def test_a_decision_is_recorded_with_caller_reasons_and_redaction(audited: Audited) -> None:
    with audited.client("alice") as c:
        answer = c.post(
            "/v1/models/credit-risk/predict?explain=true",
            json={"instances": [ROW, ROW], "id": "app-1"},
        ).json()
        digest = c.get("/v1/models/credit-risk").json()["artifact_sha256"]
    (record,) = audited.records(request_id=answer["request_id"])
    assert record["caller"] == "alice" and record["kind"] == "predict"
    assert (record["model"], record["version"]) == ("credit-risk", "1")
    assert record["artifact_sha256"] == digest and record["client_id"] == "app-1"
    assert record["output"] == {
        "predictions": answer["predictions"],
        "probabilities": answer["probabilities"],
    }
    assert record["reason_codes"] == [e["reason_codes"] for e in answer["explanations"]]
    assert record["reason_codes"][0], "a reason code is expected for this applicant"
    assert record["explanations"][0]["values"] == answer["explanations"][0]["values"]
    expected = "hmac-sha256:" + hmac.new(DIGEST_KEY.encode(), b"35", hashlib.sha256).hexdigest()
    for row in record["input"]:
        assert row["age"] == {"digest": expected}
        assert {k: v for k, v in row.items() if k != "age"} == {
            k: v for k, v in ROW.items() if k != "age"
        }
    assert len(record["hash"]) == 64 and len(record["prev_hash"]) == 64


def test_refused_requests_leave_no_record(audited: Audited) -> None:
    before = len(audited.records())
    with audited.client("alice") as c:
        bad = c.post("/v1/models/credit-risk/predict", json={"instances": [{"age": "old"}]})
        missing = c.post("/v1/models/nope/predict", json={"instances": [ROW]})
    assert (bad.status_code, missing.status_code) == (422, 404)
    assert len(audited.records()) == before


def test_v2_infer_is_recorded(audited: Audited) -> None:
    with audited.client("alice") as c:
        r = c.post(
            "/v2/models/iris/infer",
            json={
                "id": "v2-call",
                "inputs": [
                    {"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": IRIS[0]}
                ],
            },
        )
    assert r.status_code == 200, r.text
    request_id = r.headers["x-request-id"]
    (record,) = audited.records(request_id=request_id)
    assert record["kind"] == "infer" and record["caller"] == "alice"
    assert record["model"] == "iris" and record["client_id"] == "v2-call"
    label = next(o for o in r.json()["outputs"] if o["name"] == "predict")["data"]
    assert record["output"]["predictions"] == label


def test_records_filter_and_page(audited: Audited) -> None:
    ids = {"iris": [], "credit-risk": []}  # type: dict[str, list[str]]
    with audited.client("alice") as c:
        for _ in range(3):
            ids["iris"].append(
                c.post("/v1/models/iris/versions/1/predict", json={"instances": IRIS}).json()[
                    "request_id"
                ]
            )
            ids["credit-risk"].append(
                c.post("/v1/models/credit-risk/predict", json={"instances": [ROW]}).json()[
                    "request_id"
                ]
            )
    everything = audited.records()
    assert [r["seq"] for r in everything] == list(range(1, len(everything) + 1))
    iris = audited.records(model="iris")
    assert {r["model"] for r in iris} == {"iris"}
    assert set(ids["iris"]) <= {r["request_id"] for r in iris}
    assert audited.records(model="iris", version="2") == []
    assert len(audited.records(model="iris", version="1")) == len(iris)
    mine = [r for r in everything if r["request_id"] in ids["credit-risk"]]
    since, until = mine[0]["time"], mine[-1]["time"]
    window = audited.records(since=since, until=until)
    assert window and all(since <= r["time"] < until for r in window)
    assert mine[0] in window and mine[-1] not in window
    pages: list[dict[str, Any]] = []
    after = 0
    with audited.client("auditor") as c:
        for _ in range(len(everything) + 2):  # bounded
            page = c.get("/v1/audit/records", params={"limit": 2, "after": after}).json()
            pages += page["records"]
            if page["next_after"] is None:
                break
            after = page["next_after"]
        assert pages == everything
        bad = c.get("/v1/audit/records", params={"since": "yesterday"})
        assert bad.status_code == 422 and bad.json()["code"] == "invalid_input"
        assert c.get("/v1/audit/records", params={"limit": 0}).status_code in (400, 422)


def test_verify_endpoint_reports_the_first_bad_record(audited: Audited) -> None:
    with audited.client("alice") as c:
        for _ in range(3):
            c.post("/v1/models/credit-risk/predict", json={"instances": [ROW]})
    with audited.client("auditor") as c:
        ok = c.get("/v1/audit/verify").json()
        assert ok["ok"] is True and ok["first_bad"] is None and ok["records"] >= 3
        victim = ok["head"]["seq"] - 1
        (text,) = execute(audited.url, "SELECT body FROM audit_records WHERE seq = ?", (victim,))[0]
        execute(
            audited.url,
            "UPDATE audit_records SET body = ? WHERE seq = ?",
            (text.replace('"alice"', '"mallory"'), victim),
        )
        try:
            bad = c.get("/v1/audit/verify").json()
        finally:
            execute(audited.url, "UPDATE audit_records SET body = ? WHERE seq = ?", (text, victim))
        assert bad["ok"] is False
        assert bad["first_bad"]["seq"] == victim and "edited" in bad["first_bad"]["reason"]
        assert c.get("/v1/audit/verify").json()["ok"] is True


def test_cli_verify_and_export(audited: Audited, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from xserve.cli.main import main

    runner = CliRunner()
    ok = runner.invoke(main, ["audit", "verify", "--url", audited.url])
    assert ok.exit_code == 0 and "chain intact" in ok.output, ok.output
    out = tmp_path / "audit.jsonl"
    exported = runner.invoke(main, ["audit", "export", "--url", audited.url, "--out", str(out)])
    assert exported.exit_code == 0, exported.output
    from xserve.audit.record import canonical, chain_hash

    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines == audited.records()
    for line in lines:  # an exported record re-hashes to its hash without xserve's store
        own, prev = line.pop("hash"), line.pop("prev_hash")
        assert chain_hash(prev, canonical(line)) == own
    (row,) = execute(audited.url, "SELECT * FROM audit_records WHERE seq = 2")
    execute(audited.url, "DELETE FROM audit_records WHERE seq = 2")
    try:
        bad = runner.invoke(main, ["audit", "verify", "--url", audited.url])
    finally:
        execute(audited.url, f"INSERT INTO audit_records VALUES ({', '.join('?' * 9)})", row)
    assert bad.exit_code == 1 and "record 2" in bad.output and "missing" in bad.output
    assert runner.invoke(main, ["audit", "verify", "--url", audited.url]).exit_code == 0
    absent = runner.invoke(main, ["audit", "verify", "--url", f"sqlite:///{tmp_path / 'no.db'}"])
    assert absent.exit_code != 0 and "no audit log" in absent.output
    assert not (tmp_path / "no.db").exists()


def test_audit_turned_off_answers_unrecorded_and_says_so(tmp_path: Path) -> None:
    root = copy_demo_models(tmp_path / "models")
    with running_server(root, env={"XSERVE_AUDIT_URL": "none"}) as server, server.client() as c:
        answer = c.post("/v1/models/credit-risk/predict", json={"instances": [ROW]})
        assert answer.status_code == 200
        r = c.get("/v1/audit/records")
        assert r.status_code == 404 and r.json()["code"] == "audit_disabled"
        assert c.get("/v1/audit/verify").status_code == 404
    assert "AUDIT LOG DISABLED" in server.log.read_text()
    assert not list(tmp_path.rglob("*.db"))


def test_an_inline_explain_is_recorded_once_as_an_explain_decision(audited: Audited) -> None:
    with audited.client("alice") as c:
        r = c.post(
            "/v1/models/credit-risk/explain",
            json={"instances": [ROW], "method": "tree_shap", "id": 17},
        )
    assert r.status_code == 200, r.text
    answer = r.json()
    (record,) = audited.records(request_id=answer["request_id"])
    assert record["kind"] == "explain" and record["caller"] == "alice"
    assert record["client_id"] == 17 and answer["id"] == 17
    assert record["explanations"][0]["values"] == answer["explanations"][0]["values"]
    assert record["reason_codes"] == [e["reason_codes"] for e in answer["explanations"]]


def test_a_job_is_recorded_once_when_it_finishes_under_its_submitter(audited: Audited) -> None:
    request = {"instances": [ROW], "method": "lime", "params": {"num_samples": 200}, "id": "a-9"}
    with audited.client("alice") as c:
        ticket = c.post("/v1/models/credit-risk/explain", json=request)
    assert ticket.status_code == 202, ticket.text
    job_id = ticket.json()["job_id"]
    views = []
    with audited.client("alice") as c:  # polling (four times) records nothing more
        deadline = time.monotonic() + 90
        while len(views) < 4:
            view = c.get(f"/v1/jobs/{job_id}").json()
            if view["status"] == "succeeded":
                views.append(view)
            else:
                assert view["status"] in ("queued", "running"), view
                assert time.monotonic() < deadline, view
                time.sleep(0.05)
    assert all(v == views[0] for v in views)  # every poll reads the same answer
    result = views[0]["result"]
    assert "inputs" not in result and "worker_pid" not in result
    assert result["request_id"] == job_id and result["id"] == "a-9"
    (record,) = audited.records(request_id=job_id)  # four polls, one record
    assert record["kind"] == "explain" and record["caller"] == "alice"
    assert record["client_id"] == "a-9"
    assert record["explanations"][0]["values"] == result["explanations"][0]["values"]
    assert set(record["input"][0]) == set(ROW)


def test_only_the_submitter_an_auditor_or_an_admin_reads_a_job(audited: Audited) -> None:
    """Anyone else gets the 404 of a job that does not exist: job ids leak nothing."""
    keys_file = audited.server.models_dir.parent / "keys.txt"
    keys = {  # the server reads its keys file again when it changes
        "carol": add_key(keys_file, "carol", "explain,audit"),
        "root": add_key(keys_file, "root", "admin"),
    }
    request = {"instances": [ROW], "method": "lime", "params": {"num_samples": 100}}
    with audited.client("alice") as c:
        ticket = c.post("/v1/models/credit-risk/explain", json=request)
    assert ticket.status_code == 202, ticket.text
    job_id = ticket.json()["job_id"]
    unknown_id = "f" * 32

    def read(who: str, which: str = job_id) -> httpx.Response:
        key = keys.get(who) or audited.keys[who]
        with audited.server.client() as c:
            deadline = time.monotonic() + 10
            while True:  # a key just added: 401 until the server has read the file again
                r = c.get(f"/v1/jobs/{which}", headers={"Authorization": f"Bearer {key}"})
                if r.status_code != 401 or time.monotonic() > deadline:
                    return r
                time.sleep(0.1)

    def not_found(r: httpx.Response, which: str) -> None:
        assert r.status_code == 404, r.text
        assert r.json() == {
            "error": f"job {which!r} not found (unknown, or its result expired)",
            "code": "job_not_found",
        }

    deadline = time.monotonic() + 90
    while (mine := read("alice")).json()["status"] != "succeeded":
        assert mine.status_code == 200 and mine.json()["status"] in ("queued", "running"), mine
        assert time.monotonic() < deadline
        not_found(read("bob"), job_id)  # while it is queued or running, too
        time.sleep(0.05)
    not_found(read("bob"), job_id)  # and once it finished (its state rewritten)
    not_found(read("bob", unknown_id), unknown_id)  # exactly as an unknown job
    for who in ("carol", "root"):
        r = read(who)
        assert r.status_code == 200 and r.json() == mine.json(), (who, r.text)
    # The audit role alone reads every job too (an auditor follows decisions).
    r = read("auditor")
    assert r.status_code == 200 and r.json() == mine.json(), r.text
    not_found(read("auditor", unknown_id), unknown_id)


def test_v1_and_v2_echo_and_record_the_client_id_under_one_rule(audited: Audited) -> None:
    """Sent and not null: echoed and recorded, by v1 and V2 alike; else neither."""
    values = [[ROW[name] for name in ROW]]
    v2 = {"inputs": [{"name": "input-0", "shape": [1, 8], "datatype": "FP64", "data": values}]}
    with audited.client("alice") as c:
        answers = {
            "v1-sent": c.post(
                "/v1/models/credit-risk/predict", json={"instances": [ROW], "id": "c-1"}
            ),
            "v1-null": c.post(
                "/v1/models/credit-risk/predict", json={"instances": [ROW], "id": None}
            ),
            "v1-none": c.post("/v1/models/credit-risk/predict", json={"instances": [ROW]}),
            "v2-sent": c.post("/v2/models/credit-risk/infer", json={**v2, "id": "c-2"}),
            "v2-none": c.post("/v2/models/credit-risk/infer", json=v2),
        }
    for name, r in answers.items():
        assert r.status_code == 200, (name, r.text)
        request_id = r.json().get("request_id") or r.headers["x-request-id"]
        (record,) = audited.records(request_id=request_id)
        sent = {"v1-sent": "c-1", "v2-sent": "c-2"}.get(name)
        assert record.get("client_id") == sent, name
        if name.startswith("v1"):
            assert r.json().get("id") == sent, name
        else:
            assert r.json()["id"] == (sent or ""), name  # V2 always has an id field

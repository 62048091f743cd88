"""What one connection can make the server hold, against a real ``xserve serve`` (uvicorn
run with ``uvicorn_limits()``): compressed bodies (gzip, deflate; a zip bomb refused while it
inflates), slow bodies and slow or huge headers (answered and closed), and large bodies
decoded off the event loop (health answers meanwhile)."""

from __future__ import annotations

import gzip
import json
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.server import Server, copy_demo_models, running_server

ROW = [35, 52000, 0.31, 0.4, 5, 0, 48, 15000]
LIMITS = {
    "XSERVE_BODY_TIMEOUT": "1",
    "XSERVE_BODY_MIN_RATE": "1024",
    "XSERVE_HEADER_TIMEOUT": "1",
    "XSERVE_MAX_HEADER_BYTES": "8192",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``xserve serve`` (uvicorn with ``uvicorn_limits()``) with short limits."""
    models = copy_demo_models(tmp_path_factory.mktemp("limits") / "models", ["credit-risk"])
    with running_server(models, env=LIMITS) as srv:
        yield srv


def _predict(server: Server, body: bytes, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/models/credit-risk/predict",
        content=body,
        headers={"Content-Type": "application/json", **headers},
        timeout=30,
    )


def _peak_memory(server: Server) -> int:
    """The server process's peak resident memory, in kB."""
    status = Path(f"/proc/{server.proc.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))


# -- Content-Encoding -----------------------------------------------------------------


def test_gzip_and_deflate_bodies_are_read(server: Server) -> None:
    plain = json.dumps({"instances": [ROW, ROW]}).encode()
    expected = _predict(server, plain).json()["probabilities"]
    raw_deflate = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    for encoding, body in [
        ("gzip", gzip.compress(plain)),
        ("deflate", zlib.compress(plain)),  # the zlib format, as RFC 9110 names it
        ("deflate", raw_deflate.compress(plain) + raw_deflate.flush()),  # as some clients do
        ("identity", plain),
    ]:
        answer = _predict(server, body, **{"Content-Encoding": encoding})
        assert answer.status_code == 200, (encoding, answer.text)
        assert answer.json()["probabilities"] == expected


def test_a_gzip_v2_binary_body(server: Server) -> None:
    tensor = np.array([ROW], dtype=np.float64).tobytes()
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "input-0",
                    "shape": [1, 8],
                    "datatype": "FP64",
                    "parameters": {"binary_data_size": len(tensor)},
                }
            ]
        }
    ).encode()
    answer = httpx.post(
        f"{server.url}/v2/models/credit-risk/infer",
        content=gzip.compress(head + tensor),
        headers={"Content-Encoding": "gzip", "Inference-Header-Content-Length": str(len(head))},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["shape"] == [1]


def test_a_zip_bomb_is_refused_while_it_inflates(server: Server) -> None:
    """200 MB of zeros compressed to 200 kB: refused at the 10 MB limit without the server
    ever holding the 200 MB."""
    bomb = gzip.compress(b"0" * (200 << 20), compresslevel=9)
    assert len(bomb) < 1 << 20
    before = _peak_memory(server)
    answer = _predict(server, bomb, **{"Content-Encoding": "gzip"})
    assert answer.status_code == 413
    assert answer.json()["code"] == "payload_too_large"
    assert "decompressed" in answer.json()["error"]
    assert _peak_memory(server) - before < 60_000  # kB: the limit and a chunk, not 200 MB


def test_other_encodings_and_broken_streams(server: Server) -> None:
    body = json.dumps({"instances": [ROW]}).encode()
    answer = _predict(server, body, **{"Content-Encoding": "br"})
    assert answer.status_code == 415
    assert answer.json() == {
        "error": "Content-Encoding 'br': only gzip and deflate are accepted",
        "code": "unsupported_encoding",
    }
    truncated = gzip.compress(body)[:-12]
    answer = _predict(server, truncated, **{"Content-Encoding": "gzip"})
    assert (answer.status_code, answer.json()["code"]) == (400, "bad_encoding")
    answer = _predict(server, b"not gzip at all", **{"Content-Encoding": "gzip"})
    assert (answer.status_code, answer.json()["code"]) == (400, "bad_encoding")


# -- slow and large requests ------------------------------------------------------------


def _answer_and_close(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and when it closed."""
    sock.settimeout(timeout)
    started, data = time.monotonic(), b""
    while chunk := sock.recv(65536):
        data += chunk
    return data, time.monotonic() - started


def test_a_slow_body_gets_408_and_the_connection_closes(server: Server) -> None:
    """A body trickling in at 20 bytes a second (slowloris): 408 after about the body
    timeout of 1 s (plus 1 s per 1024 bytes received), and the server closes."""
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            b"POST /v1/models/credit-risk/predict HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
        )
        stop_sending = threading.Event()

        def trickle() -> None:
            while not stop_sending.wait(0.1):
                try:
                    sock.sendall(b" " * 2)
                except OSError:
                    return

        sender = threading.Thread(target=trickle)
        sender.start()
        try:
            data, elapsed = _answer_and_close(sock, timeout=15)
        finally:
            stop_sending.set()
            sender.join()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), data[:200]
    assert b"connection: close" in head.lower()
    assert json.loads(body)["code"] == "body_timeout"
    assert elapsed < 5


def test_slow_headers_get_408_huge_ones_431_broken_ones_400(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # never finished
        data, elapsed = _answer_and_close(sock, timeout=15)
    assert data.startswith(b"HTTP/1.1 408"), data[:200]
    assert json.loads(data.partition(b"\r\n\r\n")[2])["code"] == "header_timeout"
    assert elapsed < 5
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        big = b"GET /health/live HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"a" * 20000 + b"\r\n"
        sock.sendall(big)  # the headers are not over yet, and already too large
        data, _ = _answer_and_close(sock, timeout=15)
    assert data.startswith(b"HTTP/1.1 431"), data[:200]
    assert json.loads(data.partition(b"\r\n\r\n")[2])["code"] == "headers_too_large"
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        whole = b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
        sock.sendall(whole)  # complete headers in one write: parsed at once if not counted
        data, _ = _answer_and_close(sock, timeout=15)
    assert data.startswith(b"HTTP/1.1 431"), data[:200]
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Ctl: \x10\r\n\r\n")  # not HTTP
        data, _ = _answer_and_close(sock, timeout=15)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"application/json" in head, data[:200]
    assert json.loads(body) == {"error": "Invalid HTTP request received.", "code": "bad_request"}
    # Ordinary requests, header by header in separate writes, still pass.
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        for part in (b"GET /health/live HTTP/1.1\r\n", b"Host: x\r\n", b"\r\n"):
            sock.sendall(part)
            time.sleep(0.05)
        sock.settimeout(10)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")


SENDER = """
import json, sys
import httpx, numpy as np
rows = 150_000
tensor = np.random.default_rng(0).uniform(1, 100, (rows, 8)).tobytes()
spec = {"name": "input-0", "shape": [rows, 8], "datatype": "FP64",
        "parameters": {"binary_data_size": len(tensor)}}
head = json.dumps({"inputs": [spec]}).encode()
for _ in range(3):
    answer = httpx.post(sys.argv[1] + "/v2/models/credit-risk/infer", content=head + tensor,
                        headers={"Inference-Header-Content-Length": str(len(head))}, timeout=60)
    print(answer.status_code, answer.json()["error"], flush=True)
"""


def _health_while(server: Server, sender_code: str) -> tuple[list[str], list[float]]:
    """What another process sending ``sender_code``'s requests printed, and the latencies
    of /health/live probed meanwhile."""
    sender = subprocess.Popen(
        [sys.executable, "-c", sender_code, server.url], stdout=subprocess.PIPE, text=True
    )
    latencies = []
    with httpx.Client(base_url=server.url, timeout=10) as client:
        while sender.poll() is None:
            started = time.perf_counter()
            assert client.get("/health/live").status_code == 200
            latencies.append(time.perf_counter() - started)
            time.sleep(0.01)
    out, _ = sender.communicate()
    return out.splitlines(), latencies


def test_health_answers_while_a_large_body_is_decoded(server: Server) -> None:
    """A 9.6 MB V2 binary body (150,000 rows: more than the server takes, so 413), sent
    three times by another process, is decoded off the event loop: /health/live answers
    within 100 ms meanwhile."""
    printed, latencies = _health_while(server, SENDER)
    assert printed == ["413 instances: 150000 given, at most 10000"] * 3
    assert len(latencies) > 10
    assert max(latencies) < 0.1, sorted(latencies)[-5:]

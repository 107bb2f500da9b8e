"""A client that goes away cancels its work: generation within a step, streamed or not, in both dialects, and
embeddings between batches. Each test hangs up on a real server and watches its slots and its log."""

import contextlib
import json
import re
import socket
import time

import httpx
import pytest

from tests.helpers import Server

# The acceptance asks for the slot to be free within a second of the disconnect (here it takes a step, tens of ms);
# two seconds leave room for a decode step on a loaded 2-core machine.
FREED_WITHIN_S = 2.0
# How long the log may lag behind what /api/ps shows (the engine frees the slot, then logs the ending).
LOGGED_WITHIN_S = 5.0

# Greedy, these go on far past a second (the model counts, then repeats digits, to the token limit). No grammar: its
# steps are several times slower on a loaded machine.
COUNT = [{"role": "user", "content": "Count from 1 to 1000, separated by commas."}]
GREEDY = {"num_predict": 2000, "temperature": 0}
NON_STREAMED = {
    "/api/generate": {"model": "smollm2", "prompt": COUNT[0]["content"], "stream": False, "options": GREEDY},
    "/api/chat": {"model": "smollm2", "messages": COUNT, "stream": False, "options": GREEDY},
    "/v1/chat/completions": {"model": "smollm2", "messages": COUNT, "max_tokens": 2000, "temperature": 0},
    "/v1/completions": {"model": "smollm2", "prompt": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,", "max_tokens": 2000,
                        "temperature": 0},
}


@pytest.fixture(scope="module")
def srv(ember_home, tmp_path_factory):
    """A server of this module's own, one slot: hanging up on a shared one could disturb other tests. Its engines stay
    loaded: llama-cpp-python sends the process's output to /dev/null while a model loads, log lines included."""
    server = Server(ember_home, tmp_path_factory.mktemp("disconnect") / "server.log", EMBER_NUM_PARALLEL="1",
                    EMBER_KEEP_ALIVE="-1").start()
    with httpx.Client(base_url=server.url, timeout=120) as api:  # both engines loaded before any test times itself
        assert api.post("/api/generate", json={"model": "smollm2", "prompt": "hi",
                                               "options": {"num_predict": 1}, "stream": False}).status_code == 200
        assert api.post("/api/embed", json={"model": "smollm2", "input": "hi"}).status_code == 200
    yield server
    server.stop()


@pytest.fixture
def api(srv):
    with httpx.Client(base_url=srv.url, timeout=30) as client:
        yield client


def busy_slots(api: httpx.Client, embedding: bool = False) -> int:
    role = "embed" if embedding else "generate"
    return sum(e["slots_busy"] for m in api.get("/api/ps").json()["models"] for e in m["engines"] if e["for"] == role)


def hang_up_after(url: str, path: str, body: dict, seconds: float = 1.0) -> float:
    """Sends a request and closes the connection after `seconds` without an answer; returns when it closed."""
    with httpx.Client(base_url=url, timeout=seconds) as client, pytest.raises(httpx.ReadTimeout):
        client.post(path, json=body)
    return time.monotonic()  # the timed-out connection is closed, and so is the client


def raw_post(url: str, path: str, body: dict) -> socket.socket:
    """A request on a bare socket, so that the test decides when the connection closes."""
    host, port = httpx.URL(url).host, httpx.URL(url).port
    data = json.dumps(body).encode()
    sock = socket.create_connection((host, port))
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def seconds_until_idle(api: httpx.Client, since: float, embedding: bool = False, limit: float = 60) -> float:
    while busy_slots(api, embedding) and time.monotonic() - since < limit:
        time.sleep(0.01)
    assert busy_slots(api, embedding) == 0, f"still busy {limit} s after the disconnect"
    return time.monotonic() - since


def log_size(srv: Server) -> int:
    return srv.process.log_path.stat().st_size


def logged(srv: Server, offset: int, *patterns: str, within: float = LOGGED_WITHIN_S) -> str:
    """The log written since `offset`, once every pattern is in it."""
    deadline = time.monotonic() + within
    while True:
        with srv.process.log_path.open("rb") as f:  # the whole of it: Server.log_text() keeps only its end
            f.seek(offset)
            text = f.read().decode(errors="replace")
        missing = [p for p in patterns if not re.search(p, text)]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not missing, f"not in the log: {missing}\n{text}"
    assert "Traceback" not in text and " 500 " not in text, text
    return text


@pytest.mark.parametrize("path", NON_STREAMED)
def test_a_non_streamed_answer_stops_when_its_client_hangs_up(srv, api, path):
    offset = log_size(srv)
    hung_up = hang_up_after(srv.url, path, NON_STREAMED[path])
    assert seconds_until_idle(api, hung_up) <= FREED_WITHIN_S
    logged(srv, offset, r"reason=cancelled", rf"{re.escape(path)} cancelled: the client disconnected",
           rf"POST {re.escape(path)} 499")
    # The one slot serves the next request at once.
    r = api.post(path, json={**NON_STREAMED[path], "max_tokens": 2, "options": {"num_predict": 2}})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
def test_a_stream_stops_when_its_client_hangs_up(srv, api, path):
    offset = log_size(srv)
    body = {**NON_STREAMED[path], "stream": True}
    with httpx.Client(base_url=srv.url, timeout=30) as client, client.stream("POST", path, json=body) as r:
        lines = r.iter_lines()
        for _ in range(5):
            next(lines)
        assert busy_slots(api) == 1
    hung_up = time.monotonic()
    assert seconds_until_idle(api, hung_up) <= FREED_WITHIN_S
    logged(srv, offset, r"reason=cancelled", r"stream cancelled: the client disconnected")


@pytest.mark.parametrize("path", ["/api/embed", "/v1/embeddings"])
def test_embeddings_stop_between_batches_when_their_client_hangs_up(srv, api, path):
    offset = log_size(srv)
    # Minutes of work: hundreds of batches.
    inputs = [f"Sentence number {i} is about the weather in a small town by the sea. " * 8 for i in range(1000)]
    with contextlib.closing(raw_post(srv.url, path, {"model": "smollm2", "input": inputs})):
        deadline = time.monotonic() + 30
        while not busy_slots(api, embedding=True) and time.monotonic() < deadline:  # tokenized, and embedding
            time.sleep(0.01)
        assert busy_slots(api, embedding=True) == 1
    # The batch in progress ends first: a fraction of a second, more on a loaded machine.
    seconds_until_idle(api, time.monotonic(), embedding=True)
    text = logged(srv, offset, r"embed: cancelled after \d+ of \d+ inputs",
                  rf"{re.escape(path)} cancelled: the client disconnected", rf"POST {re.escape(path)} 499")
    done, total = map(int, re.search(r"embed: cancelled after (\d+) of (\d+) inputs", text).groups())
    assert 0 < done < total == len(inputs)

"""A real `ember serve`: the official clients with an API key, /metrics after real traffic, a graceful SIGTERM, and
no open address without keys."""

import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import ollama
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ember.bench.harness import ember_env, free_port

QUICK = {"temperature": 0, "num_predict": 16, "seed": 7}
MESSAGES = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def keyed(ember_home, tmp_path_factory):
    from tests.helpers import Server

    srv = Server(ember_home, tmp_path_factory.mktemp("keyed") / "server.log",
                 EMBER_API_KEYS="user-key:use,root-key").start()
    yield srv
    srv.stop()


def test_the_official_clients_work_with_a_key(keyed):
    chat = openai.OpenAI(base_url=f"{keyed.url}/v1", api_key="user-key", max_retries=0)
    reply = chat.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=8, temperature=0)
    assert reply.choices[0].message.content
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{keyed.url}/v1", api_key="wrong", max_retries=0).models.list()

    client = ollama.Client(host=keyed.url, headers={"Authorization": "Bearer user-key"})
    assert client.chat(model="smollm2", messages=MESSAGES, options=QUICK).message.content
    with pytest.raises(ollama.ResponseError) as refused:  # a use key cannot change the store
        client.copy("smollm2", "stolen")
    assert refused.value.status_code == 403
    with pytest.raises(ollama.ResponseError) as refused:
        ollama.Client(host=keyed.url).list()
    assert refused.value.status_code == 401
    assert httpx.get(f"{keyed.url}/health").status_code == 200  # for supervisors, without a key


def test_metrics_after_real_traffic(keyed):
    auth = {"Authorization": "Bearer root-key"}
    body = {"model": "smollm2", "messages": MESSAGES, "options": QUICK, "stream": False}
    for _ in range(2):
        assert httpx.post(f"{keyed.url}/api/chat", json=body, headers=auth, timeout=120).status_code == 200
    text = httpx.get(f"{keyed.url}/metrics", headers=auth).text
    found = {(s.name, tuple(sorted(s.labels.items()))): s.value
             for family in text_string_to_metric_families(text) for s in family.samples}
    assert found[("ember_generated_tokens_total", (("model", "smollm2"),))] > 0
    assert found[("ember_time_to_first_token_seconds_count", (("model", "smollm2"),))] >= 2
    assert found[("ember_http_requests_total", (("method", "POST"), ("route", "/api/chat"), ("status", "200")))] >= 2
    assert found[("ember_loaded_models", ())] >= 1
    assert found[("ember_model_memory_bytes", (("model", "smollm2:latest"), ("part", "weights")))] > 50e6


def test_sigterm_lets_a_running_generation_finish_then_exits_0(ember_home, tmp_path):
    port = free_port()
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([sys.executable, "-m", "ember", "serve"], stdout=log, stderr=subprocess.STDOUT,
                            env=ember_env(ember_home, port, EMBER_SHUTDOWN_GRACE="60s"))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        body = {"model": "smollm2", "prompt": "Count from one to fifty in words.", "stream": True,
                "options": {"temperature": 0, "num_predict": 48, "seed": 1}}
        lines, started = [], threading.Event()

        def generate():
            with httpx.stream("POST", f"{url}/api/generate", json=body, timeout=120) as r:
                for line in r.iter_lines():
                    started.set()
                    lines.append(line)

        reader = threading.Thread(target=generate)
        reader.start()
        assert started.wait(60)
        proc.send_signal(signal.SIGTERM)
        reader.join(120)
        assert proc.wait(60) == 0
        assert '"done":true' in lines[-1] and '"done_reason":"length"' in lines[-1]  # it ran to its end
        with pytest.raises(httpx.ConnectError):  # and nothing listens any more
            httpx.get(f"{url}/health", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    assert "requests in flight have" in (tmp_path / "server.log").read_text()


def test_an_open_address_needs_keys_or_insecure(tmp_path):
    env = {**os.environ, "EMBER_HOME": str(tmp_path), "EMBER_HOST": f"0.0.0.0:{free_port()}"}
    env.pop("EMBER_API_KEYS", None)
    result = subprocess.run([sys.executable, "-m", "ember", "serve"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1 and "--insecure" in result.stderr and "Traceback" not in result.stderr

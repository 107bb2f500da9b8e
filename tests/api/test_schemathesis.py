"""schemathesis against a real `ember serve` (its own home, so random deletes touch nothing shared): every route of
ember's OpenAPI description, generated and mutated requests; no 5xx, no answer that breaks the description.

`positive_data_acceptance` is left out: it expects every schema-valid body to be accepted, and some refusals are rules
a JSON schema cannot state (a model that exists, images for a text model, one prompt per completion). Each of those
is a 4xx that names what was wrong, which the other checks hold it to.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from ember.store.store import ModelStore
from tests.helpers import Server


@pytest.fixture
def fuzzed_server(tmp_path):
    home = tmp_path / "home"
    ModelStore(home / "models").pull("smollm2")
    # Answers stay short whatever num_predict the fuzzer sends (or leaves unset), so the run takes seconds.
    srv = Server(home, tmp_path / "server.log", EMBER_MAX_PREDICT="8", EMBER_MAX_QUEUE="64").start()
    yield srv
    srv.stop()


def test_every_route_against_its_openapi_description(fuzzed_server, tmp_path):
    st = str(Path(sys.executable).parent / "st")  # the one installed beside this Python
    result = subprocess.run(
        [st, "run", f"{fuzzed_server.url}/openapi.json", "--checks", "all",
         "--exclude-checks", "positive_data_acceptance", "--max-examples", "10", "--seed", "20261123",
         "--generation-database", "none", "--continue-on-failure", "--request-timeout", "60",
         "--report", "junit", "--report-dir", str(tmp_path / "report")],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    summary = result.stdout[-6000:]
    assert result.returncode == 0, summary + "\n" + fuzzed_server.log_text()
    tested = re.search(r"Tested: (\d+)", summary)
    assert tested and int(tested.group(1)) >= 25, summary  # every operation, not a run that found none
    assert "Traceback" not in fuzzed_server.log_text()

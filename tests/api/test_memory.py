"""Conversation memory: a model's past turns kept in its own collection and recalled into later chats."""

import time

import ollama
import pytest

QUICK = {"temperature": 0, "num_predict": 12, "seed": 5}
FACT = "My cat is called Barsik and she is afraid of the vacuum cleaner."


def turns(api, name: str) -> list[dict]:
    shown = api.get(f"/api/collections/{name}")
    return shown.json()["files"] if shown.status_code == 200 else []


def wait_for_turns(api, name: str, count: int) -> list[dict]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # a turn is written after its answer went out
        found = turns(api, name)
        if len(found) >= count:
            return found
        time.sleep(0.2)
    raise AssertionError(f"{name} holds {len(turns(api, name))} turns, not {count}")


@pytest.fixture
def rememberer(server, api):
    client = ollama.Client(host=server.url)
    client.create(model="rememberer", from_="smollm2", parameters={"memory": True})
    yield client
    client.delete("rememberer")
    api.delete("/api/collections/memory-rememberer.latest")


def test_turns_are_kept_and_recalled(rememberer, api):
    name = "memory-rememberer.latest"
    first = rememberer.chat(model="rememberer", messages=[{"role": "user", "content": FACT}], options=QUICK)
    kept = wait_for_turns(api, name, 1)
    assert kept[0]["kind"] == "conversation" and kept[0]["title"].startswith("My cat is called Barsik")
    hit = api.post(f"/api/collections/{name}/query", json={"query": "cat", "k": 1}).json()["results"][0]
    assert hit["text"] == f"User: {FACT}\nAssistant: {first.message.content.strip()}"

    question = [{"role": "user", "content": "What is my cat afraid of?"}]
    without = rememberer.chat(model="rememberer", messages=question, options={**QUICK, "memory": False})
    recalled = rememberer.chat(model="rememberer", messages=question, options=QUICK)
    # The earlier turn went into the system message: the same question costs more prompt tokens with memory.
    assert recalled.prompt_eval_count > without.prompt_eval_count + 15
    wait_for_turns(api, name, 2)  # the question with memory on is kept too; with memory off it was not
    assert len(turns(api, name)) == 2

    # A turn the client already sends in its history is not recalled again.
    history = [{"role": "user", "content": FACT}, {"role": "assistant", "content": first.message.content},
               *question]
    off = rememberer.chat(model="rememberer", messages=history, options={**QUICK, "memory": False})
    on = rememberer.chat(model="rememberer", messages=history, options=QUICK)
    assert on.prompt_eval_count == off.prompt_eval_count  # both kept turns' questions are in the history


def test_an_unrelated_question_recalls_nothing(rememberer, api):
    name = "memory-rememberer.latest"
    rememberer.chat(model="rememberer", messages=[{"role": "user", "content": FACT}], options=QUICK)
    wait_for_turns(api, name, 1)
    question = [{"role": "user", "content": "Кто написал «Войну и мир»?"}]
    off = rememberer.chat(model="rememberer", messages=question, options={**QUICK, "memory": False})
    on = rememberer.chat(model="rememberer", messages=question, options=QUICK)
    assert on.prompt_eval_count == off.prompt_eval_count

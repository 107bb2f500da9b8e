"""Agent frameworks people point at Ollama, as they are, against a real `ember serve` and the bundled model: a
LangChain tool-calling agent (ChatOllama and ChatOpenAI) completes a task that needs two tools; LlamaIndex's Ollama
LLM and embedding classes work."""

import pytest
from langchain.agents import create_agent
from langchain_core.tools import tool
from langchain_ollama import ChatOllama
from langchain_openai import ChatOpenAI
from llama_index.core.llms import ChatMessage
from llama_index.embeddings.ollama import OllamaEmbedding
from llama_index.llms.ollama import Ollama

TASK = "What is the weather in Paris and what is the time in Rome?"


def two_tools(calls: list):
    @tool
    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        calls.append(("get_weather", city))
        return f"sunny, 21 C in {city}"

    @tool
    def get_time(city: str) -> str:
        """Get the current local time in a city."""
        calls.append(("get_time", city))
        return f"14:05 in {city}"

    return [get_weather, get_time]


@pytest.mark.parametrize("dialect", ["ollama", "openai"])
def test_langchain_agent_completes_a_two_tool_task(server, dialect):
    if dialect == "ollama":
        llm = ChatOllama(model="smollm2", base_url=server.url, temperature=0, num_predict=80)
    else:
        llm = ChatOpenAI(model="smollm2", base_url=f"{server.url}/v1", api_key="unused", temperature=0,
                         max_tokens=80, max_retries=0)
    calls: list = []
    agent = create_agent(llm, two_tools(calls))
    # The agent loop ends only when the model answers without calling: a model that kept calling would hit the limit.
    result = agent.invoke({"messages": [{"role": "user", "content": TASK}]}, {"recursion_limit": 10})
    # Both cities asked about are looked up, each call with valid arguments. Which tool the 135M model picks for Rome
    # varies with small prompt changes (get_time, or get_weather again): the mechanism is what this test holds.
    assert ("get_weather", "Paris") in calls and {city for _, city in calls} == {"Paris", "Rome"}
    final = result["messages"][-1]
    assert final.type == "ai" and not final.tool_calls and final.content.strip()


def test_llama_index_ollama_llm(server):
    llm = Ollama(model="smollm2", base_url=server.url, request_timeout=120, temperature=0,
                 additional_kwargs={"num_predict": 16})
    assert llm.complete("The capital of France is").text.strip()
    assert llm.chat([ChatMessage(role="user", content="Say hi.")]).message.content.strip()
    pieces = [r.delta for r in llm.stream_complete("Count: one, two,")]
    assert len(pieces) > 2 and "".join(pieces).strip()


def test_llama_index_ollama_embedding(server):
    embed = OllamaEmbedding(model_name="smollm2", base_url=server.url)
    one = embed.get_text_embedding("hello")
    batch = embed.get_text_embedding_batch(["hello", "привет"])
    assert len(one) == len(embed.get_query_embedding("hello")) > 0
    assert len(batch) == 2 and batch[0] == pytest.approx(one, abs=1e-5)

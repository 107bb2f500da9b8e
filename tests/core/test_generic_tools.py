"""ember's generic tool form, for models whose chat template has no place for tools: the pieces without a model."""


from llama_cpp import LlamaGrammar

from ember.core import tools as toolkit
from ember.core.templates import CHATML, render
from ember.core.types import Message, ToolCall
from ember.runtime.generation import _schema_grammar

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city.",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                     "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}},
]
# Gemma-style: refuses anything but alternating user and assistant turns.
ALTERNATING = (
    "{% for m in messages %}{% if (m.role == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('roles must alternate') }}{% endif %}<{{ m.role }}>{{ m.content }}{% endfor %}"
)


def conversation() -> list[Message]:
    return [
        Message("user", "Weather in Paris and the time?"),
        Message("assistant", "", tool_calls=[ToolCall("get_weather", {"city": "Paris"}, id="call_1"),
                                              ToolCall("get_time", {}, id="call_2")]),
        Message("tool", "sunny, 21 C", tool_name="call_1"),  # OpenAI names the call's id
        Message("tool", "14:05", tool_name="get_time"),  # Ollama names the tool
    ]


def test_the_description_names_every_tool_its_schema_and_the_call_form():
    text = toolkit.describe_tools([*TOOLS, {"type": "function", "function": {
        "name": "forecast", "description": "Forecast.\n  Several days.", "parameters": {"type": "object", "properties": {
            "city": {"type": "string"}, "units": {"enum": ["c", "f"]}, "days": {}}, "required": ["city"]}}}])
    assert "- get_weather(city: string): Current weather in a city\n- get_time()\n" in text
    assert '- forecast(city: string, units?: "c"|"f", days?: any): Forecast. Several days' in text
    assert '<tool_call>{"name": "TOOL NAME"' in text


def test_instructions_go_at_the_head_of_the_system_prompt():
    with_system = toolkit.with_instructions([Message("system", "Be brief."), Message("user", "hi")], "TOOLS")
    assert [(m.role, m.content) for m in with_system] == [("system", "TOOLS\n\nBe brief."), ("user", "hi")]
    assert toolkit.with_instructions([Message("user", "hi")], "TOOLS")[0] == Message("system", "TOOLS")


def test_calls_and_results_become_plain_turns_that_any_template_renders():
    plain = toolkit.plain_history(conversation())
    assert [(m.role, m.content) for m in plain] == [
        ("user", "Weather in Paris and the time?"),
        ("assistant", 'I called get_weather with {"city": "Paris"}.\nI called get_time with {}.'),
        ("user", "get_weather returned: sunny, 21 C\n\nget_time returned: 14:05"),
    ]
    assert not any(m.tool_calls or m.tool_name for m in plain)
    render(ALTERNATING, [m.for_template() for m in plain])  # two results in a row would break alternation


def test_the_decision_question_before_and_after_results():
    question, call = toolkit.decision_question([Message("user", "Weather in Paris?")], TOOLS)
    assert call == "yes" and "Request: Weather in Paris?" in question
    assert "get_weather (Current weather in a city); get_time" in question and "need one of these tools" in question
    question, call = toolkit.decision_question(conversation(), TOOLS)
    assert call == "no" and "fully answer" in question
    assert 'get_weather(city="Paris") returned: sunny, 21 C\nget_time() returned: 14:05' in question
    assert toolkit.decision_question([Message("system", "Be brief.")], TOOLS) is None
    long = toolkit.decision_question([Message("user", "x" * 50_000)], TOOLS)[0]
    assert len(long) < 3000  # fits any context window


def test_a_repeated_call_ends_the_answer_and_repeats_are_made_once():
    one = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    same = '<tool_call>{ "name": "get_weather",  "arguments": { "city": "Paris" } }</tool_call>'
    other = '<tool_call>{"name": "get_weather", "arguments": {"city": "Rome"}}</tool_call>'
    assert not toolkit.repeats_a_call(one)
    assert not toolkit.repeats_a_call(f"{one}\n{other}")
    assert toolkit.repeats_a_call(f"{one}\n{other}\n{same}")
    assert not toolkit.repeats_a_call(f"{one}\n<tool_call>" + '{"name": "get_wea')  # not finished yet
    content, calls = toolkit.parse_tool_calls(f"{one}\n{other}\n{same}", TOOLS)
    assert content == "" and [c.arguments["city"] for c in calls] == ["Paris", "Rome"]


def test_answered_calls_are_those_made_since_the_last_request():
    messages = conversation()
    assert toolkit.answered([ToolCall("get_weather", {"city": "Paris"})], messages)
    assert not toolkit.answered([ToolCall("get_weather", {"city": "Rome"})], messages)
    assert not toolkit.answered([ToolCall("get_weather", {"city": "Paris"})], [*messages, Message("user", "And now?")])
    assert not toolkit.answered([], messages)


def test_the_tagged_call_grammar_compiles_in_llama_cpp_and_admits_only_calls():
    grammar = toolkit.tagged_call_grammar(_schema_grammar(toolkit.forced_call_schema(TOOLS)))
    assert grammar.startswith("root ::= ember-tagged-call")
    assert LlamaGrammar.from_string(grammar, verbose=False)
    assert grammar.count("root ::=") == 1


def test_chatml_without_tools_renders_the_generic_prompt():
    messages = toolkit.with_instructions(toolkit.plain_history(conversation()), toolkit.describe_tools(TOOLS))
    text = render(CHATML, [m.for_template() for m in messages])
    assert text.startswith("<|im_start|>system\nYou can call these tools:")
    assert text.endswith("<|im_start|>assistant\n")

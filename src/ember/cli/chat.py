"""`ember run`: one answer, or an interactive chat with history, multi-line input and /commands."""

import base64
import readline  # noqa: F401  (line editing and history for input())
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from ember.cli.client import LocalClient, connect
from ember.config import Settings
from ember.core.errors import EmberError
from ember.core.options import parse_options

err = Console(stderr=True, highlight=False)

HELP = """Commands:
  /set parameter NAME VALUE   set an option (temperature, top_k, num_ctx, stop, …)
  /set system TEXT            set the system prompt
  /set preset NAME            balanced, creative, factual, concise, long-form
  /show parameters            the options set in this chat
  /clear                      forget the conversation
  /bye                        leave (Ctrl-D works too)
Start a message with \"\"\" to write several lines; end it with \"\"\"."""


def _answer(client, model, messages, options, preset, keep_alive, verbose) -> str:
    pieces = []
    stats = {}
    for item in client.chat(model, messages, options, preset, keep_alive):
        if isinstance(item, dict):
            stats = item
        else:
            pieces.append(item)
            sys.stdout.write(item)
            sys.stdout.flush()
    sys.stdout.write("\n")
    if stats.get("image_input"):
        err.print(f"[yellow]note: {stats['image_input']['note']}[/yellow]")
    if stats.get("truncated"):
        err.print(f"[yellow]note: the {stats['truncated_messages']} oldest messages ({stats['truncated_tokens']} "
                  "tokens) did not fit the context window and were left out[/yellow]")
    if verbose and stats.get("eval_duration"):
        rate = stats["eval_count"] / (stats["eval_duration"] / 1e9)
        err.print(f"prompt {stats['prompt_eval_count']} tokens, answer {stats['eval_count']} tokens "
                  f"at {rate:.1f} tok/s")
    return "".join(pieces)


def _read_message() -> str | None:
    try:
        line = input(">>> ")
    except EOFError:
        return None
    if not line.startswith('"""'):
        return line
    lines = [line[3:]]
    while not lines[-1].endswith('"""'):
        try:
            lines.append(input("... "))
        except EOFError:
            break
    lines[-1] = lines[-1].removesuffix('"""')
    return "\n".join(lines).strip()


def _set_parameter(options: dict, args: list[str]) -> None:
    if len(args) < 2:
        raise EmberError("usage: /set parameter NAME VALUE")
    name, value = args[0], " ".join(args[1:])
    candidate = dict(options)
    candidate[name] = [*options.get("stop", []), value] if name == "stop" else value
    checked = parse_options(candidate).model_dump(exclude_none=True)  # names and types, as the API checks them
    options.clear()
    options.update(checked)
    err.print(f"set {name} = {options[name]}")


def _images(paths: list[Path]) -> list[str]:
    """The image files, base64-encoded as the API takes them; checked before anything is sent."""
    encoded = []
    for path in paths:
        try:
            encoded.append(base64.b64encode(path.read_bytes()).decode("ascii"))
        except OSError as e:
            raise EmberError(f"cannot read the image {path}: {e.strerror}") from None
    return encoded


def run(settings: Settings, model: str, prompt: str | None, *, preset=None, keep_alive=None, verbose=False,
        memory: bool | None = None, images: list[Path] | None = None) -> None:
    attached = _images(images or [])
    if attached and prompt is None:
        raise EmberError("--image goes with a prompt: ember run MODEL \"what does this say?\" --image photo.png")
    client = connect(settings)
    options: dict = {} if memory is None else {"memory": memory}
    try:
        if prompt is not None:
            message = {"role": "user", "content": prompt, **({"images": attached} if attached else {})}
            _answer(client, model, [message], options, preset, keep_alive, verbose)
            return
        messages: list[dict] = []
        err.print(f"chatting with {model}; /? for help, /bye to leave")
        while (text := _read_message()) is not None:
            words = text.split()
            if not words:
                continue
            if text.startswith("/"):
                try:
                    if words[0] in ("/bye", "/exit"):
                        break
                    if words[0] in ("/?", "/help"):
                        err.print(HELP, highlight=False)
                    elif words[0] == "/clear":
                        messages.clear()
                        err.print("conversation cleared")
                    elif words[:2] == ["/set", "parameter"]:
                        _set_parameter(options, words[2:])
                    elif words[:2] == ["/set", "system"]:
                        messages = [m for m in messages if m["role"] != "system"]
                        system = text.split(None, 2)[2] if len(words) > 2 else ""
                        messages.insert(0, {"role": "system", "content": system})
                    elif words[:2] == ["/set", "preset"] and len(words) == 3:
                        from ember.core.options import preset as check_preset
                        check_preset(words[2])
                        preset = words[2]
                    elif words[:2] == ["/show", "parameters"]:
                        err.print(options or "no parameters set in this chat", highlight=False)
                    else:
                        err.print(f"unknown command {words[0]!r}; /? lists them")
                except EmberError as e:
                    err.print(f"[red]{escape(e.message)}[/red]", highlight=False)
                continue
            messages.append({"role": "user", "content": text})
            try:
                reply = _answer(client, model, messages, options, preset, keep_alive, verbose)
            except KeyboardInterrupt:
                err.print("\n[yellow]stopped[/yellow]")
                messages.pop()
                continue
            messages.append({"role": "assistant", "content": reply})
    finally:
        if isinstance(client, LocalClient):
            client.close()

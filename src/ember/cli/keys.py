"""`ember keys add|ls|rm`: the API keys a server accepts, kept hashed in EMBER_HOME/keys.json."""

import typer
from rich.console import Console
from rich.table import Table

from ember.config import Settings
from ember.ops.keys import Access, KeysFile

keys_app = typer.Typer(no_args_is_help=True, help="API keys: once one exists, every request needs a key.")
out = Console()


def _file() -> KeysFile:
    return KeysFile(Settings.from_env().keys_file)


@keys_app.command("add")
def add(name: str = typer.Argument(..., help="who or what the key is for, e.g. open-webui"),
        scope: str = typer.Option("use", "--scope", help="use (run models), manage (also change the store) or admin "
                                                         "(also back up and restore)")):
    """Make a key and print it: the only time it is shown (only its hash is kept)."""
    access = Access.parse(scope)
    key = _file().add(name, access)
    out.print(f"key '{name}' ({access.label}):\n")
    out.print(key, markup=False, highlight=False)
    out.print("\nsend it as 'Authorization: Bearer KEY' (OpenAI and Ollama clients: api_key / headers), or set "
              "EMBER_API_KEY for the ember CLI. It is not shown again.", highlight=False)


@keys_app.command("ls")
def list_keys():
    """List the keys by name and scope (the keys themselves are not kept)."""
    table = Table("NAME", "SCOPE", "CREATED", box=None, header_style="bold")
    for key in _file().read():
        table.add_row(key.name, key.access.label, key.created)
    out.print(table)


@keys_app.command("rm")
def remove(name: str):
    """Remove a key: a running server refuses it from its next request."""
    _file().remove(name)
    out.print(f"removed key '{name}'")

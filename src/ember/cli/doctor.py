"""`ember doctor`: one line per check, or JSON for scripts; exits 1 when a check failed (warnings alone pass)."""

import json

import typer
from rich.console import Console
from rich.markup import escape

from ember.config import Settings

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

LABELS = {"ok": "[green]ok  [/green]", "warn": "[yellow]warn[/yellow]", "fail": "[bold red]FAIL[/bold red]"}


def doctor(
    load: bool = typer.Option(True, "--load/--no-load", help="load each model with llama.cpp (about a second each)"),
    verify: bool = typer.Option(True, "--verify/--quick",
                                help="hash every blob against its digest (reads the whole store); --quick: sizes only"),
    fix: bool = typer.Option(False, "--fix", help="remove partial files and unused blobs, make the keys file private"),
    as_json: bool = typer.Option(False, "--json", help="print the checks as a JSON list"),
):
    """Check the store, that each model loads, disk, memory, the port and the keys file; say how to fix problems."""
    from ember.ops.doctor import Status, run_checks

    with err.status("checking…"):  # shown only on a terminal
        checks = run_checks(Settings.from_env(), load_models=load, verify_digests=verify, fix=fix)
    failed = sum(c.status is Status.FAIL for c in checks)
    if as_json:
        # Plain print: rich would wrap long lines and colour the JSON.
        print(json.dumps([c.to_dict() for c in checks], indent=2))
    else:
        width = max(len(c.name) for c in checks)
        for c in checks:
            fix_text = f" → {escape(c.fix)}" if c.fix and c.status is not Status.OK else ""
            out.print(f"{LABELS[c.status]} {c.name:<{width}}  {escape(c.message)}{fix_text}", soft_wrap=True)
        warned = sum(c.status is Status.WARN for c in checks)
        if failed or warned:
            out.print(f"\n{failed} failed, {warned} {'warning' if warned == 1 else 'warnings'}")
        else:
            out.print("\nno problems found")
    if failed:
        raise typer.Exit(1)

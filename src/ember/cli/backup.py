"""`ember backup`, `ember backup ls` and `ember restore`: the commands over `ember.ops.backup`.

Registered in `ember.cli.main` as a sub-app (`ember backup` alone makes a backup) and a plain command (`restore`).
"""

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from ember.cli.client import server_running
from ember.cli.progress import run_job
from ember.config import Settings
from ember.core.errors import EmberError
from ember.core.humanize import plural as _plural
from ember.core.humanize import size as _size
from ember.ops import backup as ops
from ember.runtime.jobs import Job

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

backup_app = typer.Typer(help="Back up models' manifests and Modelfiles, keys, conversations and collections (model "
                              "weights with --with-models); `ember backup ls` lists the backups.")


def _names(names: list[str]) -> str:
    return ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")


@backup_app.callback(invoke_without_command=True)
def backup(
    ctx: typer.Context,
    to: Path | None = typer.Option(None, "--to", help="folder for the archive (default: $EMBER_HOME/backups)"),
    with_models: bool = typer.Option(False, "--with-models", help="include the model weights (large)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
):
    """Write one archive of everything under EMBER_HOME a restore needs (models' weights only with --with-models)."""
    if ctx.invoked_subcommand:
        return
    settings = Settings.from_env()
    result = run_job(Job("backup", "backup", lambda report: ops.backup(settings, to=to, with_models=with_models,
                                                                       report=report)), err, quiet)
    out.print(f"wrote {result.path} ({_size(result.size)}, {result.files} files)", markup=False)
    if result.without_weights:
        out.print(f"not in this backup, the weights of: {_names(result.without_weights)}. After a restore, pull or "
                  "create these models again, or back up with --with-models to keep them.", markup=False)
    if result.skipped:
        out.print(f"left out (symbolic links and special files): {_names(result.skipped)}", markup=False)


@backup_app.command("ls")
def ls(folder: Path | None = typer.Argument(None, help="where to look (default: $EMBER_HOME/backups)")):
    """List the backups, newest first."""
    settings = Settings.from_env()
    found = ops.list_backups(settings, folder)
    if not found:
        out.print(f"no backups in {folder or settings.backups}; make one with: ember backup", markup=False)
        return
    # The name, which `ember restore` takes, is never cut; it also tells the date, -models and -auto (automatic).
    table = Table(box=None, header_style="bold")
    table.add_column("NAME", no_wrap=True, min_width=max(len(info.path.name) for info in found))
    for column in ("SIZE", "MODELS", "WEIGHTS"):
        table.add_column(column, no_wrap=True)
    for info in found:
        if info.error:
            table.add_row(info.path.name, _size(info.size), "?", "?")
        else:
            table.add_row(info.path.name, _size(info.size), str(len(info.models)), "yes" if info.with_models else "no")
    out.print(table)
    for info in found:
        if info.error:
            out.print(f"{info.path.name} cannot be read: {info.error}", markup=False)


def _locate(archive: Path, settings: Settings) -> Path:
    """The archive as given, else by its name in the backups folder (as `ember backup ls` shows it)."""
    if not archive.exists() and archive.name == str(archive) and (settings.backups / archive).exists():
        return settings.backups / archive
    return archive


def restore(
    archive: Path = typer.Argument(..., help="a backup archive, or its name in $EMBER_HOME/backups"),
    yes: bool = typer.Option(False, "--yes", "-y", help="do not ask for confirmation"),
):
    """Restore a backup: every file is checked first; then EMBER_HOME's data and the model store are replaced."""
    settings = Settings.from_env()
    if server_running(settings):
        raise EmberError(f"stop the server first (ember is serving at {settings.base_url}, and a restore replaces "
                         "the files it uses)")
    archive = _locate(archive, settings)
    info = ops.read_info(archive)
    if not yes:
        when = info.created.astimezone().strftime("%Y-%m-%d %H:%M:%S") if info.created else "an unknown date"
        weights = "with their weights" if info.with_models else "no weights: the current ones are kept"
        if not typer.confirm(f"Restore the backup of {when} ({_plural(len(info.models), 'model')}, {weights})? It "
                             f"replaces everything in {settings.home} (except backups/) and the models in "
                             f"{settings.models}"):
            raise EmberError("nothing was restored")  # not typer.Exit: main() runs typer without standalone mode
    result = run_job(Job("restore", f"restore {archive.name}", lambda report: ops.restore(settings, archive, report)),
                     err)
    out.print(f"restored {_plural(len(result.models), 'model')}"
              f"{': ' + _names(result.models) if result.models else ''}, and {_plural(result.files, 'other file')}",
              markup=False)
    if result.weights_missing:
        out.print(f"these models' weights are not on this machine: {_names(result.weights_missing)}; pull or "
                  "create them again, or restore a backup made with --with-models", markup=False)
    for leftover in result.leftovers:
        err.print(f"an earlier restore was interrupted: the data it had replaced is still in {leftover}/old; "
                  "delete that folder once you are sure you do not need it", markup=False)

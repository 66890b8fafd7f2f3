"""What every `adaptd` command shares: the consoles, building Settings, failing cleanly."""

from __future__ import annotations

from typing import Annotated, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console

from daemon.settings import Settings

console = Console()
err = Console(stderr=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="print JSON for scripts")]


def settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        fail(f"bad setting ADAPTD_{str(first['loc'][0]).upper()}: {first['msg']}")


def fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)

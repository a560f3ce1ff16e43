"""CLI options whose choices are the registry's (plugins.py): installed backends and kinds.

Built lazily, when an option is parsed or ``--help`` is shown, so a plugin installed with pip
shows up in the CLI's choices without any change here, and commands that do not take these
options never load the plugins.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import click

from agent_manager import plugins


class RegistryChoice(click.Choice):
    """A ``click.Choice`` whose choices come from a function, asked when needed."""

    def __init__(self, source: Callable[[], Sequence[str]]) -> None:
        self._source = source
        super().__init__([], case_sensitive=True)

    @property  # type: ignore[override]
    def choices(self) -> Sequence[Any]:
        return tuple(self._source())

    @choices.setter
    def choices(self, value: Sequence[Any]) -> None:  # click.Choice.__init__ assigns it
        pass


def backend_choice(allow_auto: bool = True) -> RegistryChoice:
    return RegistryChoice(lambda: plugins.backend_choices(allow_auto=allow_auto))


def kind_choice() -> RegistryChoice:
    return RegistryChoice(lambda: list(plugins.kinds()))

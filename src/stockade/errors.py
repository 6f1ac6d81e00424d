"""One exception hierarchy for stockade: the CLIs print `stockade: <what failed>: <why>`."""

from __future__ import annotations


class StockadeError(Exception):
    """Anything stockade reports to a user as a one-line error."""


class SpecError(StockadeError):
    """A config.json (or other spec document) field is invalid; the message names its JSON path."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path


class ContainerError(StockadeError):
    """A runtime operation on a container failed (bad state, missing container, set-up failure)."""


class NotSupported(StockadeError):
    """The request is valid but stockade does not implement it (yet); the message says what."""

"""A JSON walker that remembers where it is, so every validation error names its JSON path."""

from __future__ import annotations

from stockade.errors import SpecError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

_TYPE_NAMES = {str: "a string", bool: "a boolean", int: "an integer", list: "an array", dict: "an object"}


class Reader:
    """A view of one JSON object at `path` (e.g. "process.user")."""

    __slots__ = ("data", "path")

    def __init__(self, data: Any, path: str = "") -> None:
        if not isinstance(data, dict):
            raise SpecError(path or "(document)", "must be an object")
        self.data: dict[str, Any] = data
        self.path = path

    def where(self, key: str | int) -> str:
        if isinstance(key, int):
            return f"{self.path}[{key}]"
        return f"{self.path}.{key}" if self.path else key

    def fail(self, key: str | int, message: str) -> SpecError:
        return SpecError(self.where(key), message)

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def _typed(self, key: str, kind: type, default: Any, required: bool) -> Any:
        value = self.data.get(key)
        if value is None:
            if required:
                raise self.fail(key, "is required")
            return default
        # bool is an int in Python; JSON keeps them apart, so do we.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.fail(key, f"must be {_TYPE_NAMES[kind]}, not {type(value).__name__}")
        return value

    def string(self, key: str, default: str | None = None, required: bool = False) -> Any:
        return self._typed(key, str, default, required)

    def flag(self, key: str, default: bool = False) -> bool:
        return bool(self._typed(key, bool, default, False))

    def integer(self, key: str, default: int | None = None, required: bool = False, minimum: int | None = None) -> Any:
        value = self._typed(key, int, default, required)
        if value is not None and minimum is not None and value < minimum:
            raise self.fail(key, f"must be >= {minimum}, not {value}")
        return value

    def obj(self, key: str, required: bool = False) -> Reader | None:
        value = self.data.get(key)
        if value is None:
            if required:
                raise self.fail(key, "is required")
            return None
        return Reader(value, self.where(key))

    def array(self, key: str) -> list[Any]:
        return list(self._typed(key, list, [], False))

    def objects(self, key: str) -> Iterator[Reader]:
        """Each element of the array at `key` as a Reader named key[i]."""
        base = self.where(key)
        for i, item in enumerate(self.array(key)):
            if not isinstance(item, dict):
                raise SpecError(f"{base}[{i}]", "must be an object")
            yield Reader(item, f"{base}[{i}]")

    def strings(self, key: str) -> list[str]:
        items = self.array(key)
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise SpecError(f"{self.where(key)}[{i}]", f"must be a string, not {type(item).__name__}")
        return items

    def string_map(self, key: str) -> dict[str, str]:
        value = self._typed(key, dict, {}, False)
        for k, v in value.items():
            if not isinstance(v, str):
                raise self.fail(key, f'value of "{k}" must be a string')
        return dict(value)

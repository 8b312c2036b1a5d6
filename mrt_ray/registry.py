"""The one registry shape behind the advantage estimators, losses and rewards: a new method is one decorated
function, chosen by its name in the config."""
from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

F = TypeVar("F")


class Registry(dict[str, F], Generic[F]):
    """name -> function. `kind` and `key` (the config key that picks an entry) make the error messages."""

    def __init__(self, kind: str, key: str):
        super().__init__()
        self.kind, self.key = kind, key

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator: register `fn` under `name`; a name can be registered once."""

        def add(fn: F) -> F:
            if name in self:
                by = getattr(self[name], "__qualname__", None) or repr(self[name])
                raise ValueError(f"{self.kind} {name!r} is already registered (by {by})")
            self[name] = fn
            return fn

        return add

    def lookup(self, name: str) -> F:
        """The function registered as `name`, or an error naming the config key and the choices."""
        if name not in self:
            raise ValueError(f"{self.key}={name!r} is not registered; choose one of {sorted(self)}")
        return self[name]

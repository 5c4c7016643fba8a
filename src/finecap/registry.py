"""A tiny name -> factory registry, shared by encoders, decoders, datasets, rewards and metrics.

Each component family creates one `Registry` and exposes `register_*`, `create_*`, `list_*`
helpers around it, so adding a component is one decorated function and no if/elif chain.
A component may register its settings class too (`register(name, config=SettingsClass)`):
the typed config layer (`finecap.config`) then validates its settings by that class.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}
        self._configs: dict[str, type] = {}

    def register(
        self, name: str, config: type | None = None
    ) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._factories[name] = factory
            if config is not None:
                self._configs[name] = config
            return factory

        return decorator

    def _check(self, name: str) -> None:
        if name not in self._factories:
            known = ", ".join(sorted(self._factories)) or "none"
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {known}")

    def create(self, name: str, *args: Any, **kwargs: Any) -> T:
        self._check(name)
        return self._factories[name](*args, **kwargs)

    def config_class(self, name: str) -> type:
        """The settings class registered with `name` (KeyError naming the known ones)."""
        self._check(name)
        if name not in self._configs:
            raise KeyError(f"{self.kind} {name!r} registered no settings class")
        return self._configs[name]

    def names(self) -> list[str]:
        return sorted(self._factories)

    def __contains__(self, name: str) -> bool:
        return name in self._factories

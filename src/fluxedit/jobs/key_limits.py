"""A key's limits: queued and running jobs, requests per minute, and its scheduling priority."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from fluxedit.config import Settings
from fluxedit.errors import InvalidInput

LIMIT_NAMES = ("max_queued", "max_running", "requests_per_minute", "priority")


@dataclass(frozen=True)
class KeyLimits:
    """None: no limit of this kind (after `with_defaults`: the Settings default was None too).

    priority: higher runs first among the keys waiting for a model; 0 by default.
    """

    max_queued: int | None = None
    max_running: int | None = None
    requests_per_minute: int | None = None
    priority: int | None = None

    def with_defaults(self, settings: Settings) -> KeyLimits:
        defaults = {
            "max_queued": settings.key_max_queued,
            "max_running": settings.key_max_running,
            "requests_per_minute": settings.key_requests_per_minute,
            "priority": 0,
        }
        return replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})

    def describe(self) -> str:
        """For `fluxedit keys list`: name=value for each limit set on the key ('-' for none)."""
        parts = [f"{f.name}={getattr(self, f.name)}" for f in fields(self) if getattr(self, f.name) is not None]
        return " ".join(parts) or "-"


def checked_limits(**given: int | None) -> dict[str, int | None]:
    """The limits given on the command line; a limit must be at least 1 (priority any integer)."""
    for name, value in given.items():
        if name not in LIMIT_NAMES:
            raise InvalidInput(f"Unknown key limit {name!r}; known: {', '.join(LIMIT_NAMES)}.", field=name)
        if value is not None and name != "priority" and value < 1:
            raise InvalidInput(f"--{name.replace('_', '-')} must be at least 1, not {value}.", field=name)
    return given

"""The two errors a user fixes, and the checks the schemas' ``__post_init__`` raise them with.

A :class:`ConfigError` names the key, its value and the rule (``data.shots=0 is invalid: must
be >= 1``), a choice also the allowed values; tests assert that wording.
"""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A config value is out of range or inconsistent; the message names the key."""


class DataError(ValueError):
    """A dataset's files are missing, damaged or not what a loader reads (``metarun.data``);
    the message names the file and the fix."""


def _check(ok: bool, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: {rule}")


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    _check(value in choices, key, value, f"allowed values are {', '.join(choices)}")

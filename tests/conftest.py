"""Compose the real ``conf/`` and shrink it for tests (tiny runs of the true pipeline)."""

from __future__ import annotations

import pytest

from metarun.config import compose, validate

# A few steps of everything: training, validation, the final test, plots.
FAST = [
    "trainer.steps=20",
    "trainer.log_every=10",
    "trainer.val_every=20",
    "trainer.progress=false",
    "eval.episodes=20",
    "eval.val_episodes=10",
    "eval.batch=10",
]


@pytest.fixture
def make_config():
    def make(*overrides: str, fast: bool = True):
        return validate(compose([*(FAST if fast else []), *overrides]))

    return make

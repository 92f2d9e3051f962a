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


CACHE_FLAGS = {
    "jax_compilation_cache_dir": "JAX_COMPILATION_CACHE_DIR",
    "jax_persistent_cache_min_compile_time_secs": "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
    "jax_persistent_cache_min_entry_size_bytes": "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES",
}


@pytest.fixture(scope="session", autouse=True)
def compile_once(tmp_path_factory):
    """Tests build the same programs again and again (a meta-step, an evaluator): compile each
    once per session, into JAX's persistent cache, which CLI subprocesses read too (the
    returned environment). A fresh cache each session: nothing carries over between runs."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    saved = {flag: getattr(jax.config, flag) for flag in CACHE_FLAGS}
    values = [str(tmp_path_factory.mktemp("jax_cache")), 0, 0]
    for flag, value in zip(CACHE_FLAGS, values, strict=True):
        jax.config.update(flag, value)
    compilation_cache.reset_cache()  # the cache is set up at the first compile of the process
    yield {env: str(value) for env, value in zip(CACHE_FLAGS.values(), values, strict=True)}
    for flag, value in saved.items():
        jax.config.update(flag, value)
    compilation_cache.reset_cache()


@pytest.fixture
def make_config():
    def make(*overrides: str, fast: bool = True):
        return validate(compose([*(FAST if fast else []), *overrides]))

    return make


@pytest.fixture(scope="session")
def omniglot(tmp_path_factory):
    """Overrides for the real Omniglot minimal1 split, prepared once per session."""
    from tests.data import fixtures

    if not fixtures.OMNIGLOT_DIR.is_dir():
        pytest.skip(f"real Omniglot archives not found at {fixtures.OMNIGLOT_DIR}")
    cache = tmp_path_factory.mktemp("omniglot_cache")
    return [
        "data=omniglot",
        f"data.root={fixtures.OMNIGLOT_DIR}",
        f"data.cache_dir={cache}",
        "data.split=minimal1",
    ]

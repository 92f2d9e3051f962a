"""The learned optimizer's baselines on quadratics: their keys in result.json, their figure, the
number Adam reports against one computed by hand, and nothing for other runs."""

import json
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metarun.baselines import BASELINE_LRS, CURVES, extra_results
from metarun.data import quadratic
from metarun.evaluate import episode_keys
from metarun.train import train
from metarun.types import REGRESSION


def value(theta, e):
    return jnp.sum(jnp.square(e.support_x @ theta - e.support_y))


def test_a_short_run_reports_the_baselines_and_plots_them(make_config, tmp_path):
    config = make_config(
        "algo=lstm_opt",
        "data=quadratic",
        "algo.horizon=10",
        "algo.unroll=5",
        "trainer.meta_batch=8",
        "trainer.val_every=0",
    )
    result = train(config, tmp_path)
    saved = json.loads((tmp_path / "result.json").read_text())
    assert set(saved["baselines"]) == {"sgd", "adam", "rmsprop"}
    assert all(np.isfinite(v) for v in saved["baselines"].values())
    assert all(lr in BASELINE_LRS for lr in saved["baseline_lrs"].values())
    assert saved["baselines"] == result["baselines"] and saved["metric"] == "loss"
    assert (tmp_path / CURVES).read_bytes()[:4] == b"\x89PNG"
    # Adam at its chosen rate, by hand, on the meta-test's quadratics: the reported number.
    # (Adam is coordinatewise: one run on the stacked tasks is a run per task.)
    keys = episode_keys(config.eval.seed, "test", config.eval.episodes)
    episodes = jax.vmap(lambda k: quadratic.episode(k, config.data))(keys)
    adam = optax.adam(saved["baseline_lrs"]["adam"])
    theta = jax.vmap(quadratic.start)(episodes.support_x)
    state = adam.init(theta)
    for _ in range(config.algo.horizon):
        updates, state = adam.update(jax.vmap(jax.grad(value))(theta, episodes), state)
        theta = optax.apply_updates(theta, updates)
    finals = jax.vmap(value)(theta, episodes)
    assert saved["baselines"]["adam"] == pytest.approx(float(np.mean(finals)), rel=1e-4)


@pytest.mark.parametrize(
    ("algo", "objective"), [("lstm_opt", REGRESSION), ("maml", quadratic.QUADRATIC)]
)
def test_other_runs_get_no_baselines(algo, objective, tmp_path):
    """lstm_opt on a model's data, or another algorithm: nothing added, nothing drawn."""
    exp = SimpleNamespace(
        config=SimpleNamespace(algo=SimpleNamespace(name=algo)),
        source=SimpleNamespace(objective=objective),
    )
    assert extra_results(exp, None, tmp_path) == {}
    assert not any(tmp_path.iterdir())

"""The train loop end to end on tiny runs: files written, determinism, NaN guard."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from metarun.evaluate import EvalResult, confidence_interval, episode_keys
from metarun.train import Best, InFlight, train


def test_run_dir_holds_metrics_result_and_plots(make_config, tmp_path):
    result = train(make_config(), tmp_path)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [10, 20]
    assert all(np.isfinite(r["loss"]) and r["tasks_per_sec"] > 0 for r in lines)
    assert "val_mse" in lines[1] and "val_mse" not in lines[0]
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved == result
    assert {k: saved[k] for k in ("metric", "episodes", "inner_steps", "split")} == {
        "metric": "mse",
        "episodes": 20,
        "inner_steps": 10,
        "split": "test",
    }
    assert saved["mean"] > 0 and saved["ci95"] > 0
    for png in ("adaptation.png", "learning_curves.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_a_terminal_progress_is_one_log_line_per_logged_step(
    make_config, tmp_path, capsys, caplog
):
    # Under pytest (as under SLURM) stderr is no terminal: no bar's carriage returns.
    caplog.set_level("INFO", logger="metarun.train")
    train(make_config("trainer.progress=true"), tmp_path)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert [line.split()[1] for line in lines] == ["10/20", "20/20"]
    assert "val_mse=" in lines[1] and "steps/s" in lines[0]
    assert "\r" not in capsys.readouterr().err


def test_the_host_waits_for_the_step_max_in_flight_earlier(monkeypatch):
    # What bounds a stop: the step loop never runs more than `limit` steps ahead of the device.
    import metarun.train as train_module

    waited = []
    monkeypatch.setattr(train_module.jax, "block_until_ready", waited.append)
    in_flight = InFlight(2)
    for step in range(5):
        in_flight.add(f"metrics of step {step}")
    assert waited == ["metrics of step 0", "metrics of step 1", "metrics of step 2"]


def test_same_seed_same_numbers_other_seed_other_numbers(make_config, tmp_path):
    a = train(make_config("seed=1"), tmp_path / "a")
    b = train(make_config("seed=1"), tmp_path / "b")
    c = train(make_config("seed=2"), tmp_path / "c")
    assert (tmp_path / "a/metrics.jsonl").read_text().count('"loss"') == 2
    assert a["mean"] == b["mean"] and a["pre_adaptation_mean"] == b["pre_adaptation_mean"]
    assert c["mean"] != a["mean"]


def test_zero_steps_evaluates_the_initialisation(make_config, tmp_path):
    result = train(make_config("trainer.steps=0"), tmp_path)
    assert result["steps"] == 0 and np.isfinite(result["mean"])
    assert (tmp_path / "metrics.jsonl").read_text() == ""


def test_diverging_inner_loop_stops_naming_the_step(make_config, tmp_path):
    with pytest.raises(FloatingPointError, match=r"loss or gradient at step 1; lower"):
        train(make_config("algo.inner_lr=1000", "algo.inner_steps=5"), tmp_path)


def test_evaluation_episodes_depend_on_eval_seed_and_split_only():
    np.testing.assert_array_equal(episode_keys(0, "test", 4), episode_keys(0, "test", 4))
    assert not np.array_equal(episode_keys(0, "test", 4), episode_keys(0, "val", 4))
    assert not np.array_equal(episode_keys(0, "test", 4), episode_keys(1, "test", 4))


def test_confidence_interval_is_196_standard_errors():
    values = np.array([1.0, 2.0, 3.0, 4.0])
    mean, ci = confidence_interval(values)
    assert mean == 2.5
    assert ci == pytest.approx(1.96 * np.std(values, ddof=1) / 2)


def test_image_split_is_an_input_of_the_meta_step_not_a_constant(make_config):
    """Classification episodes from a device-resident uint8 split through the generic step."""
    import jax
    import optax

    from metarun.algos.maml import maml
    from metarun.data.episodes import make_sampler
    from metarun.experiment import Experiment, rng_streams
    from metarun.models.mlp import MLP
    from metarun.step import init_state, make_meta_step
    from metarun.types import CLASSIFICATION, TaskSource

    config = make_config("trainer.meta_batch=4")
    images = np.random.default_rng(0).integers(0, 256, (30, 20, 8, 8, 1), dtype=np.uint8)
    sampler = make_sampler(images, ways=5, shots=1, queries=3)
    source = TaskSource({"train": sampler}, CLASSIFICATION, output_dim=5)
    model = MLP(hidden=(16,), output_dim=5)
    learner = maml(
        lambda p, x, context=None: model.apply({"params": p}, x), CLASSIFICATION.loss, inner_lr=0.1
    )
    exp = Experiment(config, source, model, learner, optax.adam(1e-3), 0.0, learner)
    init_key, train_key = rng_streams(0)
    state = init_state(exp, init_key)

    jaxpr = jax.make_jaxpr(make_meta_step(exp))(state, train_key, sampler)
    assert max((np.size(c) for c in jaxpr.consts), default=0) < images.size // 10
    state, metrics = jax.jit(make_meta_step(exp))(state, train_key, sampler)
    assert set(metrics) == {"loss", "accuracy", "grad_norm"}
    assert 0.0 <= float(metrics["accuracy"]) <= 1.0 and np.isfinite(float(metrics["loss"]))


@pytest.mark.parametrize(
    ("maximize", "scores", "best_step"),
    [
        (True, [0.5, 0.7, 0.6], 2),  # accuracy
        (False, [0.5, 0.7, 0.3], 3),  # mse
        (False, [float("nan"), 0.9, 0.4], 3),  # a NaN is never the best
    ],
)
def test_the_best_validation_step_is_kept(maximize, scores, best_step):
    best = Best(maximize)
    for step, score in enumerate(scores, start=1):
        params = {"w": jnp.full((2,), float(step))}
        best.offer(step, EvalResult(score, 0.01 * step, None), params)
    assert best.step == best_step and best.value == scores[best_step - 1]
    assert best.ci95 == 0.01 * best_step
    np.testing.assert_array_equal(best.params["w"], [best_step, best_step])


def test_a_host_transfer_inside_a_training_step_is_an_error(make_config, tmp_path, monkeypatch):
    # The loop runs each step under jax.transfer_guard("disallow"): an input left on the
    # host (here the training key, as numpy) would be copied to the device every step, and
    # must fail instead.
    import metarun.train as train_module

    real = train_module.compile_meta_step

    def with_a_host_key(*args, **kwargs):
        step, seconds = real(*args, **kwargs)
        return lambda state, key, sample: step(state, np.asarray(key), sample), seconds

    monkeypatch.setattr(train_module, "compile_meta_step", with_a_host_key)
    with pytest.raises(Exception, match="host-to-device transfer"):
        train(make_config(), tmp_path)


def test_episodes_with_nan_predictions_are_counted_and_never_best():
    from metarun.evaluate import evaluate

    def evaluator(meta_params, sample, keys):  # 4 episodes, the last two diverged
        return {
            "accuracy": np.array([0.8, 0.6, 0.2, 0.2]),
            "loss": np.array([0.5, 0.9, np.nan, np.inf]),
        }

    result = evaluate(evaluator, None, None, None, "accuracy")
    assert result.mean == pytest.approx(0.45) and result.nonfinite == 2
    best = Best(maximize=True)
    best.offer(1, EvalResult(0.3, 0.01, None), {"w": jnp.zeros(1)})
    best.offer(2, result, {"w": jnp.ones(1)})
    assert best.step == 1

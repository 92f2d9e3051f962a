"""Properties every registered algorithm must have (like optax's shared optimizer tests)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metarun.algos import FITS, algos, inner_steps, outer_grad
from metarun.algos.base import map_chunks
from metarun.experiment import build, rng_streams
from metarun.step import init_state, make_meta_step
from metarun.types import FIXED_CLASSES
from tests.helpers import NARROW, flat, task

ALGOS = algos.names()
GRADIENT_BASED = ["anil", "fomaml", "maml", "metasgd", "reptile"]
# Learned optimizers (an LSTM updates the model) run on sinusoid too, with their own steps.
LEARNED_OPTIMIZERS = ["lstm_opt", "meta_lstm"]
# Classifiers run on real Omniglot, 5-way 1-shot with 2 queries, on a narrow Conv-4.
IMAGES = [
    "data.train_queries=2",
    "data.queries=2",
    "data.train_ways=null",
    "model.filters=8",
    "trainer.meta_batch=8",
]
# Learners of one classifier over fixed classes (data.protocol=supervised or domains, as their
# presets): 10 Omniglot characters, batches of 16.
SUPERVISED = {"erm": FIXED_CLASSES, "l2rw": ("supervised",), "mldg": ("domains",)}
SUPERVISED_DATA = ["data.ways=10", "data.batch_size=16", "model.filters=8"]
# Options that change what a learner meta-learns run the shared tests of the meta-step too:
# every algorithm as configured, then each variant (name, its overrides).
VARIANTS = [
    pytest.param("protonet", ["algo.hallucinate=2"], id="protonet-hallucinate"),
    pytest.param(  # 25 s a test: make test-all
        "matchingnet",
        ["algo.hallucinate=2"],
        id="matchingnet-hallucinate",
        marks=pytest.mark.extended,
    ),
]
# Baseline++ is Baseline with cosine heads (the same pre-training path and test-time fit,
# tests/algos/test_baseline.py checks the heads): make test runs Baseline's shared tests.
# Plain training is the unweighted loss of the batches L2RW weighs, through the same
# fixed_class_learner and batch_mean_grad: make test runs L2RW's and MLDG's.
TEST_ALL_ONLY = {"baseline_pp", "erm"}


def _param(name: str, *values):
    marks = [pytest.mark.extended] if name in TEST_ALL_ONLY else []
    return pytest.param(name, *values, id=name, marks=marks)


ALGOS_AND_VARIANTS = [_param(name, []) for name in ALGOS] + VARIANTS
# MLDG's batches go through batch_mean_grad's vmap as L2RW's do (make test): its vmap = loop
# test (20 s of second-order compiles) runs in make test-all.
VMAPPED = [
    pytest.param(*p.values, id=p.id, marks=[*p.marks, pytest.mark.extended])
    if p.id == "mldg"
    else p
    for p in ALGOS_AND_VARIANTS
]


@pytest.fixture
def config_for(make_config, request):
    """``config_for(name, *overrides)``: sinusoid for gradient-based learners, else Omniglot."""

    def make(name: str, *overrides: str):
        if name in GRADIENT_BASED:
            return make_config(f"algo={name}", *overrides)
        if name in LEARNED_OPTIMIZERS:
            return make_config(f"algo={name}", *NARROW.get(name, []), *overrides)
        omniglot = request.getfixturevalue("omniglot")
        if name in SUPERVISED:
            return make_config(f"algo={name}", *omniglot, *SUPERVISED_DATA, *overrides)
        return make_config(f"algo={name}", *omniglot, *IMAGES, *NARROW.get(name, []), *overrides)

    return make


def test_every_yaml_is_registered():
    from metarun.config import conf_dir

    yamls = sorted(p.stem for p in (conf_dir() / "algo").glob("*.yaml"))
    assert yamls == ALGOS
    assert set(GRADIENT_BASED) < set(ALGOS)


def test_each_algorithm_declares_the_data_it_learns_from():
    """The table ``algos.check_data`` reads, the one place where algorithms and datasets meet:
    the metric-based and black-box learners compare classes, only the learned optimizer
    descends a function itself, the supervised learners train one classifier over fixed
    classes, every other learner fits its model to any data."""
    classifiers = {
        "baseline_pp",
        "mann",
        "matchingnet",
        "protonet",
        "relationnet",
        "siamese",
        "snail",
    }
    for name in ALGOS:
        expected = (*FITS, "minimisation") if name == "lstm_opt" else FITS
        if name in SUPERVISED:
            expected = SUPERVISED[name]
        assert algos.tasks[name] == (("classification",) if name in classifiers else expected)


@pytest.mark.parametrize("name, variant", VMAPPED)
def test_vmapped_meta_batch_equals_python_loop(config_for, name, variant):
    steps = ["algo.inner_steps=2"] if name in GRADIENT_BASED else []
    exp = build(config_for(name, *steps, *variant))
    state = init_state(exp, jax.random.PRNGKey(0))
    episodes = jax.vmap(exp.source.samplers["train"])(jax.random.split(jax.random.PRNGKey(1), 6))
    grad_fn = jax.jit(
        lambda mp, e: outer_grad(
            exp.learner, exp.source.objective, mp, e, inner_steps(exp.learner, exp.config.algo)
        ),
    )
    batched, metrics = grad_fn(state.meta_params, episodes)
    looped = [
        grad_fn(state.meta_params, jax.tree.map(lambda a: a[None], task(episodes, t)))
        for t in range(6)
    ]
    np.testing.assert_allclose(
        flat(batched), np.mean([flat(g) for g, _ in looped], 0), rtol=2e-4, atol=1e-6
    )
    np.testing.assert_allclose(metrics["loss"], np.mean([m["loss"] for _, m in looped]), rtol=1e-5)


def test_map_chunks_returns_every_task_in_order():
    tasks = {"x": jnp.arange(12.0), "y": jnp.arange(24.0).reshape(12, 2)}
    fn = jax.vmap(lambda t: {"x": 2 * t["x"], "s": t["y"].sum()})
    whole = fn(tasks)
    for chunk in (1, 3, 4, 12, 0):
        chunked = jax.jit(lambda t, c=chunk: map_chunks(fn, t, c))(tasks)
        np.testing.assert_array_equal(chunked["x"], whole["x"])
        np.testing.assert_array_equal(chunked["s"], whole["s"])
    with pytest.raises(ValueError, match="a chunk of 5 tasks does not divide the 12 tasks"):
        map_chunks(fn, tasks, 5)


def _primitives(jaxpr) -> list[str]:
    """The names of a jaxpr's primitives, those of the jaxprs inside it (loops, remat) too."""
    names = []
    for eqn in jaxpr.eqns:
        names.append(eqn.primitive.name)
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else [param]:
                inner = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr's, or a Jaxpr
                if hasattr(inner, "eqns"):
                    names += _primitives(inner)
    return names


def test_task_chunks_run_each_forward_pass_once(config_for):
    """``trainer.task_chunk`` accumulates the chunks' gradients in one loop: no chunk is
    rematerialised for a second backward loop (each forward pass computed twice: 20% of
    max-pool MAML's step, docs/speed.md), and the loop runs once per chunk."""
    exp = build(config_for("maml", "trainer.meta_batch=8"))
    state = init_state(exp, rng_streams(0)[0])
    episodes = jax.vmap(exp.source.samplers["train"])(jax.random.split(jax.random.key(0), 8))
    steps = inner_steps(exp.learner, exp.config.algo)
    chunked = jax.make_jaxpr(
        lambda mp: outer_grad(exp.learner, exp.source.objective, mp, episodes, steps, 0, 2)
    )(state.meta_params).jaxpr
    # jax.checkpoint's primitive is remat2 (jax 0.10).
    assert not [p for p in _primitives(chunked) if p.startswith(("remat", "checkpoint"))]
    loops = [e for e in chunked.eqns if e.primitive.name == "scan"]
    assert [e.params["length"] for e in loops] == [4]


@pytest.mark.parametrize(
    "name, overrides",
    [
        pytest.param("maml", ["algo.inner_steps=2", "trainer.meta_batch=8"], id="maml-sinusoid"),
        # Per-task convolution weights after adaptation, max-pooling, BatchNorm's averages.
        pytest.param(  # 25 s: make test-all
            "maml",
            ["model.strided=false", "model.bn_mode=running"],
            id="maml-omniglot-maxpool",
            marks=pytest.mark.extended,
        ),
        pytest.param("protonet", [], id="protonet-omniglot", marks=pytest.mark.extended),
    ],
)
def test_meta_step_in_task_chunks_equals_the_whole_meta_batch(
    config_for, omniglot, name, overrides
):
    """``trainer.task_chunk``: the same meta-step, run 2 tasks at a time (float summation order
    aside)."""
    images = [*omniglot, *IMAGES] if "model.strided=false" in overrides else []
    # SGD: Adam's m / sqrt(v) would turn rounding differences in near-zero gradient components
    # into whole steps of either sign.
    sgd = ["optim=sgd", "optim.lr=0.01"]
    states = []
    for chunk in (0, 2):
        exp = build(config_for(name, *images, *overrides, *sgd, f"trainer.task_chunk={chunk}"))
        init_key, train_key = rng_streams(0)
        state = init_state(exp, init_key)
        step, sample = jax.jit(make_meta_step(exp)), exp.source.samplers["train"]
        for _ in range(2):
            state, metrics = step(state, train_key, sample)
        states.append((flat(state.meta_params), float(metrics["loss"])))
    (whole, whole_loss), (chunked, chunked_loss) = states
    assert chunked_loss == pytest.approx(whole_loss, rel=1e-5)
    np.testing.assert_allclose(chunked, whole, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name, variant", ALGOS_AND_VARIANTS)
def test_meta_step_compiles_once_and_lowers_the_loss(config_for, name, variant):
    exp = build(config_for(name, "optim.lr=0.003", *variant))
    init_key, train_key = rng_streams(0)
    state = init_state(exp, init_key)
    step, sample = jax.jit(make_meta_step(exp)), exp.source.samplers["train"]
    losses = []
    for _ in range(300):
        state, metrics = step(state, train_key, sample)
        losses.append(metrics["loss"])
    assert step._cache_size() == 1, "the meta-step recompiled"
    assert int(state.step) == 300
    # Measured with seed 0: the last 50 steps' mean loss is 0.44-0.77 of the first 50's on
    # sinusoid, 0.87 for Matching Networks (whose cosine attention bounds the loss from below).
    first, last = np.mean(losses[:50]), np.mean(losses[-50:])
    assert last < 0.9 * first, (first, last)


# Determinism is the loop's (one program, keys folded from the step): make test checks one
# learner of each kind, make test-all every one.
DETERMINISM = {"maml", "protonet", "mann", "lstm_opt", "baseline", "l2rw"}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, id=name, marks=[] if name in DETERMINISM else [pytest.mark.extended])
        for name in ALGOS
    ],
)
def test_meta_step_is_deterministic_per_seed(config_for, name):
    exp = build(config_for(name, "optim.lr=0.003"))  # the program above: compiled once
    init_key, train_key = rng_streams(3)
    step, sample = jax.jit(make_meta_step(exp)), exp.source.samplers["train"]
    runs = []
    for _ in range(2):
        state = init_state(exp, init_key)
        for _ in range(3):
            state, _ = step(state, train_key, sample)
        runs.append(flat(state.meta_params))
    np.testing.assert_array_equal(*runs)


def ten_steps(exp):
    """(initial state, state after 10 jitted meta-steps, the last metrics, the jitted step)."""
    init_key, train_key = rng_streams(0)
    state = before = init_state(exp, init_key)
    step, sample = jax.jit(make_meta_step(exp)), exp.source.samplers["train"]
    for _ in range(10):
        state, metrics = step(state, train_key, sample)
    return before, state, metrics, step


@pytest.mark.parametrize(
    "overrides",
    [
        ["optim=sgd", "optim.momentum=0.9"],
        ["optim=adamw"],
        ["optim.schedule=cosine", "optim.min_lr=1e-5"],
        ["optim=sgd", "optim.clip_norm=0.5"],
    ],
)
def test_every_optimizer_option_takes_finite_steps(make_config, overrides):
    exp = build(make_config(*overrides, "trainer.steps=10"))
    before, state, metrics, step = ten_steps(exp)
    assert np.all(np.isfinite(flat(state.meta_params)))
    assert not np.allclose(flat(state.meta_params), flat(before.meta_params))


def test_maml_plus_plus_switches_train_through_the_loop(make_config):
    """MAML++'s multi-step loss, learned rates and derivative-order annealing (first order for
    5 of the 10 steps), with remat, through the real meta-step: finite, and the learned rates
    move. (Per-step BatchNorm needs a Conv-4: tests/test_api.py, tests/algos/test_mamlpp.py.)"""
    exp = build(
        make_config(
            "algo.inner_steps=2",
            "algo.msl=true",
            "algo.msl_anneal_steps=6",
            "algo.lslr=true",
            "algo.first_order_steps=5",
            "algo.remat=true",
            "trainer.steps=10",
        )
    )
    before, state, metrics, step = ten_steps(exp)
    assert np.all(np.isfinite(flat(state.meta_params)))
    assert np.isfinite(metrics["msl_loss"]) and step._cache_size() == 1
    assert not np.allclose(
        flat(state.meta_params["inner_lr"]), flat(before.meta_params["inner_lr"])
    )


def test_clip_norm_bounds_the_update(make_config):
    exp = build(make_config("optim=sgd", "optim.lr=0.1", "optim.clip_norm=0.5"))
    params = init_state(exp, jax.random.PRNGKey(0)).meta_params
    huge = jax.tree.map(lambda p: 100.0 + 0 * p, params)
    updates, _ = exp.optimizer.update(huge, exp.optimizer.init(params), params)
    assert np.linalg.norm(flat(updates)) == pytest.approx(0.1 * 0.5, rel=1e-5)

"""MLDG: ∇F through the inner step against finite differences, its first-order form, and the
domains protocol's batches (one meta-test domain, the others in the support set)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metarun.algos.mldg import mldg, mldg_objective
from metarun.config import compose, validate
from metarun.data import supervised
from metarun.types import DOMAINS
from tests.helpers import classification_problem, classifier_apply

ALPHA, BETA = 0.3, 0.7


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def objective_of(params, batch, first_order=False):
    return mldg_objective(
        classifier_apply,
        DOMAINS,
        params,
        batch,
        inner_lr=ALPHA,
        beta=BETA,
        first_order=first_order,
    )["loss"]


def test_the_meta_gradient_is_the_derivative_of_f_through_the_inner_step(x64):
    """Central differences of F(θ) = L_tr(θ) + β L_te(θ − α ∇L_tr(θ)), leaf by leaf."""
    params, batch = classification_problem(3)
    grads, metrics = mldg(classifier_apply, DOMAINS, ALPHA, BETA).outer_grad(
        params, jax.tree.map(lambda a: a[None], batch), 0, 0
    )
    parts = float(metrics["train_loss"]) + BETA * float(metrics["test_loss"])
    assert float(metrics["loss"]) == pytest.approx(parts, rel=1e-12)
    h = 1e-6
    for name, value in params.items():
        numeric = np.zeros(value.shape)
        for index in np.ndindex(value.shape):
            step = jnp.zeros(value.shape).at[index].set(h)
            up = objective_of({**params, name: value + step}, batch)
            down = objective_of({**params, name: value - step}, batch)
            numeric[index] = (up - down) / (2 * h)
        np.testing.assert_allclose(grads[name], numeric, rtol=1e-6, atol=1e-9)


def test_first_order_drops_the_hessian_term(x64):
    """∇F = ∇L_tr(θ) + β ∇L_te(θ') when the inner gradient is a constant; it differs from the
    second-order gradient (the Hessian term is not zero here)."""
    params, batch = classification_problem(4)

    def loss(p, x, y):
        return DOMAINS.loss(classifier_apply(p, x), y)

    g_tr = jax.grad(loss)(params, batch.support_x, batch.support_y)
    ahead = jax.tree.map(lambda p, g: p - ALPHA * g, params, g_tr)
    g_te = jax.grad(loss)(ahead, batch.query_x, batch.query_y)
    batches = jax.tree.map(lambda a: a[None], batch)
    first, _ = mldg(classifier_apply, DOMAINS, ALPHA, BETA, first_order=True).outer_grad(
        params, batches, 0, 0
    )
    second, _ = mldg(classifier_apply, DOMAINS, ALPHA, BETA).outer_grad(params, batches, 0, 0)
    for name in params:
        np.testing.assert_allclose(first[name], g_tr[name] + BETA * g_te[name], rtol=1e-10)
    assert not np.allclose(first["w1"], second["w1"], rtol=1e-4)


def test_a_batch_holds_one_meta_test_domain_and_the_others_in_support():
    """Images whose every pixel is their domain: the query set is one domain, drawn uniformly
    over batches; the support set never holds it, and holds every other."""
    domains, classes, n = 5, 3, 4
    images = np.broadcast_to(
        np.arange(domains, dtype=np.uint8)[:, None, None, None, None, None],
        (domains, classes, n, 2, 2, 1),
    )
    labels = np.broadcast_to(np.arange(classes, dtype=np.int32)[:, None], (classes, n))
    sample = jax.tree_util.Partial(
        lambda key, images, labels: supervised.sample_domains(key, images, labels, size=64),
        images=jnp.asarray(images),
        labels=jnp.asarray(labels),
    )
    batches = jax.vmap(sample)(jax.random.split(jax.random.PRNGKey(0), 200))
    support = np.rint(np.asarray(batches.support_x)[..., 0, 0, 0] * 255).astype(int)
    query = np.rint(np.asarray(batches.query_x)[..., 0, 0, 0] * 255).astype(int)
    assert (query == query[:, :1]).all()  # one meta-test domain per batch
    assert set(np.bincount(query[:, 0], minlength=domains)) and len(set(query[:, 0])) == domains
    for s, q in zip(support, query[:, 0], strict=True):
        assert q not in s and set(s) == set(range(domains)) - {q}


def test_the_unseen_domain_is_tested_and_never_trained_or_validated_on():
    """Domains turned by 0°, 90° and 180° (exact turns), the 180° one unseen: pixel (0, 0) of a
    drawing is its character, (0, 1) its drawing; a turn moves them to known corners."""
    characters = 6
    images = np.zeros((characters, 20, 28, 28, 1), np.uint8)
    images[:, :, 0, 0, 0] = 10 + np.arange(characters)[:, None]
    images[:, :, 0, 1, 0] = 100 + np.arange(20)[None, :]
    cfg = validate(
        compose(
            [
                "data=omniglot",
                "data.root=unused",
                "data.protocol=domains",
                "data.rotations=false",
                "data.ways=6",
                "data.domain_angles=[0,90,180]",
                "data.test_domain=2",
            ]
        )
    ).data
    source = supervised.task_source(images, cfg)
    assert source.objective.task == "domains" and source.output_dim == 6

    def corners(split):
        batch = jax.vmap(source.samplers[split])(jax.random.split(jax.random.PRNGKey(1), 20))
        x = np.rint(np.asarray(batch.query_x)[..., 0] * 255).astype(int).reshape(-1, 28, 28)
        return {
            turn: {int(v) for v in x[:, r, c] if v >= 100}
            for turn, (r, c) in {0: (0, 1), 90: (26, 0), 180: (27, 26)}.items()
        }

    test = corners("test")
    assert test[180] == set(range(115, 120)) and not test[0] and not test[90]
    val = corners("val")
    assert val[0] == val[90] == set(range(111, 115)) and not val[180]
    train = jax.vmap(source.samplers["train"])(jax.random.split(jax.random.PRNGKey(2), 20))
    x = np.rint(np.asarray(train.support_x)[..., 0] * 255).astype(int).reshape(-1, 28, 28)
    assert {int(v) for v in x[:, 27, 26] if v >= 100} == set()  # no 180° drawing trained on
    assert {int(v) for v in x[:, 0, 1] if v >= 100} <= set(range(100, 111))

"""Sinusoid regression learns, and MAML beats pretraining on all tasks (MAML §5.1, Fig. 2)."""

import pytest

from metarun.train import train
from tests.data import fixtures

pytestmark = pytest.mark.slow
STEPS = ["trainer.steps=20000", "trainer.log_every=500", "trainer.val_every=0", "eval.episodes=300"]


def test_maml_adapts_and_beats_the_pretrained_baseline(make_config, tmp_path):
    maml = train(make_config(*STEPS), tmp_path / "maml")
    # The paper's "pretrained" network (algo=baseline, conf/preset/baseline_sinusoid.yaml):
    # trained on the points of all tasks jointly, then fine-tuned with MAML's 10 steps.
    pretrained = train(make_config(*STEPS, "algo=baseline"), tmp_path / "pretrained")
    # Measured (seed 0): MAML 3.11 -> 0.11 after 10 steps; pretrained 3.09 -> 1.91. At 4000
    # steps the pre-trained network diverges on some test tasks with the fine-tuning step
    # chosen on validation at the full budget (scripts/sinusoid_pretraining.py): 20,000 here.
    assert maml["mean"] < 0.3 * maml["pre_adaptation_mean"], maml
    assert maml["mean"] < 0.5 * pretrained["mean"], (maml["mean"], pretrained["mean"])


@pytest.mark.extended  # 2 minutes of CPU; make test keeps ProtoNet's Omniglot learning test
def test_maml_learns_omniglot_5way_1shot_on_held_out_alphabets(make_config, tmp_path):
    """The image-data issue's bar: >= 80% on minimal2's own alphabets after training on minimal1.

    MAML's Omniglot settings (conf/preset/maml_omniglot.yaml) shortened to CPU minutes: 400
    meta-steps of 16 tasks with 5 training queries per class, instead of 60,000 of 32.
    """
    if not fixtures.OMNIGLOT_DIR.is_dir():
        pytest.skip(f"real Omniglot archives not found at {fixtures.OMNIGLOT_DIR}")
    config = make_config(
        "data=omniglot",
        f"data.root={fixtures.OMNIGLOT_DIR}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.split=minimal1",
        "data.train_queries=5",
        "trainer.meta_batch=16",
        "trainer.steps=400",
        "trainer.log_every=100",
        "trainer.val_every=200",
        "trainer.progress=false",
        "eval.episodes=300",
        fast=False,
    )
    result = train(config, tmp_path / "run")
    # Measured (seed 0): 86.1 ± 0.9% (metarun with these overrides); chance is 20%.
    assert result["mean"] >= 0.80, result
    assert result["pre_adaptation_mean"] < 0.3, result


# Metric-based learners on the same held-out alphabets, 5-way 1-shot, 200 test episodes.
METRIC = [
    "trainer.log_every=50",
    "trainer.val_every=0",
    "trainer.progress=false",
    "eval.episodes=200",
    "data.train_queries=5",
]


def test_protonet_learns_omniglot_from_wider_training_episodes(make_config, omniglot, tmp_path):
    """ProtoNet's own protocol, shortened: 20-way training episodes (the paper: 60), 5-way test."""
    config = make_config(
        "algo=protonet", *omniglot, *METRIC, "data.train_ways=20", "trainer.steps=100", fast=False
    )
    result = train(config, tmp_path / "run")
    # Measured (seed 0): 90.4 ± 0.9%; chance is 20%. Threshold: 10 points under the measurement.
    assert result["mean"] >= 0.80, result


@pytest.mark.parametrize(
    "name",
    ["baseline", pytest.param("baseline_pp", marks=pytest.mark.extended)],
)
def test_a_pretrained_baseline_learns_omniglot(make_config, omniglot, tmp_path, name):
    """Chen et al.'s Baseline and Baseline++ at the ProtoNet test's budget: batches of 20 × 6
    images of the training classes, 100 steps; a new head fitted to each 5-way support set."""
    config = make_config(
        f"algo={name}", *omniglot, *METRIC, "data.train_ways=20", "trainer.steps=100", fast=False
    )
    result = train(config, tmp_path / "run")
    # Measured (seed 0): Baseline 73.3 ± 1.5%, Baseline++ 76.3 ± 1.3%; chance is 20%.
    # Threshold: 10 points under the lower measurement.
    assert result["mean"] >= 0.63, result


@pytest.mark.extended
def test_matchingnet_learns_omniglot(make_config, omniglot, tmp_path):
    config = make_config(
        "algo=matchingnet",
        *omniglot,
        *METRIC,
        "trainer.meta_batch=4",
        "trainer.steps=150",
        fast=False,
    )
    result = train(config, tmp_path / "run")
    # Measured (seed 0): 71.3 ± 1.7%; chance is 20%. Threshold: 10 points under the measurement.
    assert result["mean"] >= 0.60, result


# Training budgets below: XLA's FLOP count of the meta-step (cost analysis) over the ~30
# GFLOP/s that this project's idle 2-core CPU sustains on Conv-4 (docs/speed.md). ProtoNet's
# 20-way step is 7.3 GFLOP, about 0.25 s there.


@pytest.mark.extended
def test_relationnet_learns_omniglot(make_config, omniglot, tmp_path):
    """The paper's training episodes, 5-way 1-shot with 19 queries per class (6.4 GFLOP a step:
    200 steps are about 43 s at 30 GFLOP/s), Adam 1e-3 and norm clipping from the preset."""
    metric = [o for o in METRIC if not o.startswith("data.train_queries")]
    config = make_config(
        "algo=relationnet",
        *omniglot,
        *metric,
        "data.train_queries=19",
        "trainer.steps=200",
        fast=False,
    )
    result = train(config, tmp_path / "run")
    # Measured (seed 0): 76.95 ± 1.57%, training 130 s while three other jobs shared the 2 cores
    # (0.65 s a step; ProtoNet's step took 0.79 s then, 3.3× its idle 0.24 s); chance is 20%.
    # Threshold: 10 points under the measurement.
    assert result["mean"] >= 0.67, result


@pytest.mark.extended
def test_siamese_learns_omniglot(make_config, omniglot, tmp_path):
    """Pairs from 20-way training episodes with 5 queries per class (7.3 GFLOP a step: 160 steps
    are about 39 s at 30 GFLOP/s); 5-way one-shot test by the most similar support image."""
    config = make_config(
        "algo=siamese", *omniglot, *METRIC, "data.train_ways=20", "trainer.steps=160", fast=False
    )
    result = train(config, tmp_path / "run")
    # Measured (seed 0): 78.99 ± 1.57%, training 114 s while three other jobs shared the 2 cores
    # (0.71 s a step, against ProtoNet's 0.79 s); chance is 20%. Threshold: 10 points under the
    # measurement.
    assert result["mean"] >= 0.69, result


# Black-box learners: a sequence model must learn to store and look up the support pairs before
# it classifies anything, so they take many more episodes than the metric-based ones above
# (ProtoNet: 90% after 100 steps). Both train on 5-way 1-shot and test on minimal2's alphabets.


@pytest.mark.extended
def test_mann_learns_omniglot_from_the_papers_pixels(make_config, omniglot, tmp_path):
    """The paper's input and sequences: 20×20 pixels flattened (an MLP without hidden layers),
    5 classes × 10 presentations per sequence, 16 sequences per update; Adam at 3e-3."""
    config = make_config(
        "algo=mann",
        *omniglot,
        "model=mlp",
        "model.hidden=[]",
        "data.image_size=20",
        "data.train_queries=9",
        "optim.lr=0.003",
        "trainer.meta_batch=16",
        "trainer.steps=600",
        "trainer.log_every=100",
        "trainer.val_every=0",
        "trainer.progress=false",
        "eval.episodes=300",
        fast=False,
    )
    result = train(config, tmp_path / "run")
    # Measured (seed 0): 50.7 ± 1.4%; chance is 20%. The training accuracy stays near chance for
    # ~300 steps, until the controller starts to store and look up the pairs, then climbs (66%
    # at step 600: 55% on the 2nd presentation of a class, 76% on the 10th). Training took 74 s
    # on the nearly idle 2 cores (125 s while other jobs shared them). Threshold: 15 points under
    # the measurement, for the take-off coming ~100 steps later elsewhere.
    assert result["mean"] >= 0.35, result


@pytest.mark.extended
def test_snail_learns_omniglot(make_config, omniglot, tmp_path):
    """Conv-4 with 32 filters (a quarter of the 64-filter FLOPs: with 64, no take-off in 120 steps,
    4 minutes here), 2 training queries per class, 16 episodes per update, Adam 1e-3."""
    config = make_config(
        "algo=snail",
        *omniglot,
        "model.filters=32",
        "data.train_queries=2",
        "optim.lr=0.001",
        "trainer.meta_batch=16",
        "trainer.steps=300",
        "trainer.log_every=50",
        "trainer.val_every=0",
        "trainer.progress=false",
        "eval.episodes=300",
        fast=False,
    )
    result = train(config, tmp_path / "run")
    # Measured (seed 0): 74.5 ± 1.4%; chance is 20%. Near chance for ~120 steps, then it climbs
    # (79% training accuracy at step 300). Training took 66 s on the nearly idle 2 cores (8.4
    # GFLOP a step by XLA's count; 137 s while other jobs shared them). Threshold: 20 points
    # under the measurement, for a later take-off.
    assert result["mean"] >= 0.55, result


# One classifier over 100 Omniglot characters (data.protocol=supervised / domains, the
# presets), 200 steps: chance is 1%.
FIXED = ["trainer.steps=200", "trainer.progress=false", "eval.episodes=100"]


@pytest.mark.extended  # 2 to 5 minutes of CPU
def test_l2rw_learns_through_40_percent_label_noise(make_config, omniglot, tmp_path):
    """conf/preset/l2rw_omniglot.yaml shortened: 40% of the training labels flipped, the clean
    test drawings classified."""
    result = train(make_config("algo=l2rw", *omniglot, *FIXED, fast=False), tmp_path / "run")
    # Measured (seed 0): 28.6 ± 0.9% (validation 29.8%). Threshold: 20%.
    assert result["mean"] >= 0.20, result


@pytest.mark.extended  # 2 to 5 minutes of CPU
def test_mldg_learns_and_generalises_to_the_unseen_domain(make_config, omniglot, tmp_path):
    """conf/preset/mldg_omniglot.yaml shortened: trained on the five domains turned by 0° to
    60°, tested on the 75° one."""
    result = train(make_config("algo=mldg", *omniglot, *FIXED, fast=False), tmp_path / "run")
    # Measured (seed 0): 25.9 ± 0.8% on the unseen domain, 68.7% on the source domains'
    # validation drawings. Threshold: 18%.
    assert result["mean"] >= 0.18, result


@pytest.mark.extended  # about 5 minutes of CPU, most of it compiling the supernet
def test_a_darts_search_learns_omniglot_and_its_architecture(make_config, omniglot, tmp_path):
    """scripts/reproduce.py cpu-darts' search (seed 0): first-order MAML on the 8-channel
    supernet, meta-batch 8, 300 steps; the architecture weights move off the uniform mixture."""
    import jax
    import numpy as np

    import metarun
    from metarun.config import ARCH

    search = [
        "algo=maml",
        *omniglot,
        "model=darts",
        "model.channels=8",
        "algo.first_order=true",
        "optim.arch_lr_scale=10",
        "data.train_queries=5",
        "trainer.meta_batch=8",
        "trainer.steps=300",
        "trainer.val_every=100",
        "trainer.progress=false",
    ]
    result = train(make_config(*search, fast=False), tmp_path / "run")
    # Measured (seed 0, the table's run): 54.91 ± 0.81% (validation 53.9%); chance is 20%.
    # Threshold: 15 points under.
    assert result["mean"] >= 0.40, result
    weights = jax.nn.softmax(metarun.load(tmp_path / "run").model_params[ARCH], axis=-1)
    assert float(np.max(weights)) > 0.2  # uniform: 1/8 = 0.125 (measured: 0.316)

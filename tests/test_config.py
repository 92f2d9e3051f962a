"""The real conf/: every choice composes, validates and builds; bad values name the key."""

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf

import metarun.config
from metarun.config import (
    ConfigError,
    EvalConfig,
    OptimConfig,
    TrainerConfig,
    compose,
    conf_dir,
    validate,
)
from metarun.experiment import build, check
from tests.data import fixtures

GROUPS = ["algo", "data", "model", "optim", "trainer", "eval", "logger"]
CHOICES = [(g, p.stem) for g in GROUPS for p in sorted((conf_dir() / g).glob("*.yaml"))]


def data_overrides(choice: str, tmp_path) -> list[str]:
    """What an image dataset needs to build: its files (real Omniglot, a mini-ImageNet fixture)."""
    if choice == "omniglot":
        if not fixtures.OMNIGLOT_DIR.is_dir():
            pytest.skip(f"real Omniglot archives not found at {fixtures.OMNIGLOT_DIR}")
        cache = f"data.cache_dir={tmp_path / 'cache'}"
        return [f"data.root={fixtures.OMNIGLOT_DIR}", "data.split=minimal1", cache]
    if choice == "mini_imagenet":
        for i, split in enumerate(("train", "val", "test")):
            labels = [fixtures.wnid(10 * i + c) for c in range(5)]
            fixtures.mini_imagenet_csv(tmp_path, split, labels, per_class=16, seed=i)
        return [f"data.root={tmp_path}", f"data.cache_dir={tmp_path / 'cache'}"]
    if choice == "quadratic":  # a function to minimise: learned optimizers only
        return ["algo=lstm_opt"]
    return []


@pytest.mark.parametrize(("group", "choice"), CHOICES)
def test_every_choice_composes_and_builds(group, choice, tmp_path):
    override = f"{group}=[{choice}]" if group == "logger" else f"{group}={choice}"
    extra = data_overrides(choice, tmp_path) if group == "data" else []
    config = validate(compose([override, *extra]))
    refusal = _refusal(config) if group == "algo" else ""
    if "it classifies" in refusal:  # metric and black-box: image data
        # The fixture's 5 classes per split, fewer than the presets' training ways.
        extra = ["data=mini_imagenet", "data.train_ways=null"]
        extra += data_overrides("mini_imagenet", tmp_path)
        config = validate(compose([override, *extra]))
    elif "over fixed classes" in refusal:  # Omniglot, whose presets set data.protocol
        extra = ["data=omniglot", *data_overrides("omniglot", tmp_path), "data.ways=10"]
        config = validate(compose([override, *extra]))
    build(config)


def _refusal(config) -> str:
    """The message of the data refusal of ``config``, "" if it has none."""
    try:
        check(config)
    except ConfigError as err:
        return str(err)
    return ""


def schema_of(group: str, choice: str) -> type:
    """The dataclass conf/<group>/<choice>.yaml is merged into (metarun.config.<group>)."""
    single = {"optim": OptimConfig, "trainer": TrainerConfig, "eval": EvalConfig}
    return single.get(group) or getattr(metarun.config, group).SCHEMAS[choice]


@pytest.mark.parametrize(("group", "choice"), CHOICES)
def test_a_yaml_states_its_name_and_what_differs_from_its_schema(group, choice):
    path = conf_dir() / group / f"{choice}.yaml"
    own = OmegaConf.to_container(OmegaConf.load(path))
    own.pop("defaults", None)
    if path.read_text().startswith("# @package _global_"):  # pins another group's keys too
        own = own.get(group, {})
    if group == "logger":  # each logger's keys sit under its name (its `name` is the run's)
        own = own.get(choice, {})
    defaults = OmegaConf.to_container(OmegaConf.structured(schema_of(group, choice)))
    if "name" in defaults and group != "logger":
        assert own.pop("name", None) == choice, f"{path.name} must state name: {choice}"
    for key, value in own.items():
        assert key in defaults, f"{path.name}: {key} is not in the schema"
        assert value != defaults[key], f"{path.name}: {key}: {value} is the schema's default"


def test_conf_dir_is_the_repo_root_s_or_the_installed_package_s(tmp_path, monkeypatch):
    assert conf_dir() == Path(__file__).resolve().parents[1] / "conf"  # editable install
    # A wheel carries conf/ as metarun/conf (pyproject.toml's force-include).
    package = tmp_path / "site-packages" / "metarun"
    (package / "conf").mkdir(parents=True)
    monkeypatch.setattr(metarun.config, "__file__", str(package / "config" / "__init__.py"))
    assert conf_dir() == package / "conf"


def test_defaults_are_the_paper_setting():
    config = validate(compose([]))
    assert (config.algo.name, config.algo.inner_lr, config.algo.inner_steps) == ("maml", 0.01, 1)
    assert (config.data.name, config.data.shots) == ("sinusoid", 10)
    assert config.model.hidden == [40, 40]
    assert (config.optim.name, config.optim.lr, config.trainer.meta_batch) == ("adam", 1e-3, 25)
    assert (config.eval.episodes, config.eval.inner_steps) == (600, 10)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.shots=0", "data.shots=0 is invalid: must be >= 1"),
        ("data.queries=0", "data.queries=0 is invalid"),
        ("algo.inner_lr=0", "algo.inner_lr=0.0 is invalid: must be > 0"),
        ("algo.inner_lr=-0.5", "algo.inner_lr=-0.5 is invalid"),
        ("algo.inner_steps=-1", "algo.inner_steps=-1 is invalid"),
        ("trainer.meta_batch=0", "trainer.meta_batch=0 is invalid: must be >= 1"),
        ("trainer.task_chunk=-1", "trainer.task_chunk=-1 is invalid: must be >= 0 tasks"),
        ("trainer.steps=-5", "trainer.steps=-5 is invalid"),
        ("trainer.val_every=7", "trainer.val_every=7 is invalid: must be 0 or a multiple of"),
        ("optim.lr=0", "optim.lr=0.0 is invalid"),
        (
            "optim.name=rmsprop",
            "optim.name='rmsprop' is invalid: allowed values are adam, adamw, sgd",
        ),
        ("optim.schedule=linear", "allowed values are constant, cosine"),
        (
            "optim.min_lr=1e-5",
            "optim.min_lr=1e-05 is invalid: is only used by optim.schedule=cosine",
        ),
        ("algo.msl_anneal_steps=0", "algo.msl_anneal_steps=0 is invalid: must be >= 1"),
        ("algo.first_order_steps=-1", "algo.first_order_steps=-1 is invalid: must be >= 0"),
        ("optim.momentum=0.9", "optim.momentum=0.9 is invalid: is only used by optim=sgd"),
        ("model.activation=swish", "allowed values are relu, tanh, gelu"),
        ("eval.episodes=1", "eval.episodes=1 is invalid"),
        ("data.x_min=6", "data.x_min=6.0 is invalid: must be < data.x_max=5.0"),
    ],
)
def test_bad_values_fail_naming_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        validate(compose([override]))
    assert message in str(err.value)


def test_reptile_has_no_single_valued_keys():
    # First-order by construction: algo.first_order and algo.remat would have one legal value.
    with pytest.raises(ConfigCompositionException, match="first_order"):
        compose(["algo=reptile", "algo.first_order=false"])
    assert not hasattr(validate(compose(["algo=reptile"])).algo, "remat")


def test_per_step_batchnorm_of_first_order_maml_needs_the_multi_step_loss():
    with pytest.raises(ConfigError, match="only the last step's BatchNorm copy gets a meta-grad"):
        validate(compose(["algo=fomaml", "algo.per_step_bn=true"]))
    validate(compose(["algo=fomaml", "algo.per_step_bn=true", "algo.msl=true"]))


def test_derivative_order_annealing_of_first_order_maml_is_refused():
    with pytest.raises(ConfigError, match="algo.first_order_steps=100 is invalid: anneals first"):
        validate(compose(["algo=fomaml", "algo.first_order_steps=100"]))


def test_remat_of_a_first_order_loop_is_refused():
    with pytest.raises(ConfigError, match="algo.remat=True is invalid: recomputes the second"):
        validate(compose(["algo=fomaml", "algo.remat=true"]))


def test_unknown_choice_lists_the_valid_ones():
    with pytest.raises(MissingConfigException) as err:
        compose(["algo=mamll"])
    for name in ("anil", "fomaml", "maml", "metasgd", "reptile"):
        assert f"\t{name}" in str(err.value)


def test_unknown_key_and_wrong_type_fail_at_composition():
    with pytest.raises(ConfigCompositionException, match="algo.inner_lrr"):
        compose(["algo.inner_lrr=0.1"])
    with pytest.raises(ConfigCompositionException, match="algo.inner_lr=abc"):
        compose(["algo.inner_lr=abc"])


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        # MAML's Omniglot settings, its strided Conv-4 included.
        (
            ["data=omniglot"],
            {"algo.inner_lr": 0.4, "model.strided": True, "trainer.meta_batch": 32},
        ),
        # Command-line values win over the preset.
        (
            ["data=omniglot", "algo.inner_lr=0.1", "model.strided=false"],
            {"algo.inner_lr": 0.1, "model.strided": False},
        ),
        # Another model on the same data: the algorithm preset stays, the Conv-4 variant does not.
        (["data=omniglot", "model=resnet12"], {"algo.inner_lr": 0.4, "model.name": "resnet12"}),
        (
            ["data=mini_imagenet"],
            {"model.filters": 32, "algo.inner_steps": 5, "eval.inner_steps": 10},
        ),
        (["data=mini_imagenet", "model=mlp"], {"model.name": "mlp", "algo.inner_steps": 5}),
        (["data=mini_imagenet", "algo=metasgd"], {"algo.inner_steps": 1, "eval.inner_steps": 1}),
        (["data=sinusoid"], {"algo.inner_lr": 0.01, "model.name": "mlp"}),
        # Meta-LSTM: the paper's (mini-ImageNet) and its authors' Omniglot settings.
        (
            ["data=mini_imagenet", "algo=meta_lstm"],
            {"algo.inner_steps": 12, "optim.clip_norm": 0.25},
        ),
        (["data=omniglot", "algo=meta_lstm"], {"algo.inner_steps": 15, "trainer.meta_batch": 1}),
        # ProtoNets' and Matching Networks' 64-filter Conv-4 (preset_model/), and their
        # mini-ImageNet presets with ResNet-12, which has no filters.
        (
            ["data=mini_imagenet", "algo=protonet"],
            {"model.filters": 64, "model.bn_mode": "running", "data.train_ways": 30},
        ),
        (
            ["data=mini_imagenet", "algo=protonet", "model=resnet12"],
            {"model.name": "resnet12", "model.bn_mode": "running", "data.train_ways": 30},
        ),
        (["data=mini_imagenet", "algo=matchingnet"], {"model.filters": 64, "algo.fce": True}),
        (
            ["data=mini_imagenet", "algo=matchingnet", "model=resnet12"],
            {"model.name": "resnet12", "algo.fce": True},
        ),
    ],
)
def test_paper_presets_apply_and_the_command_line_wins(overrides, expected):
    cfg = compose(
        [*overrides, "data.root=unused"] if overrides[0] != "data=sinusoid" else overrides
    )
    for key, value in expected.items():
        group, name = key.split(".")
        assert cfg[group][name] == value, key

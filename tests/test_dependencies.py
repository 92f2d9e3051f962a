"""Dependencies point one way: datasets and algorithms sit below the trainer and its figures.

The rule, read from every import statement (at any depth, function-level ones included) of
``src/metarun/data/`` and ``src/metarun/algos/``:

* neither imports matplotlib nor a module above it: the figures (``plots``), the baselines
  experiment (``baselines``), the trainer (``train``, ``step``, ``experiment``) and evaluator,
  the run dir's readers and writers (``rundir``, ``resume``, ``logger``, ``report``, ``api``,
  ``cli``, ``sweep``);
* ``data/`` imports nothing from ``algos/``, and ``algos/`` nothing from ``data/``: what an
  algorithm needs of a dataset comes in its ``Objective``, and ``algos.check_data`` is where the
  two are compared;
* no module of ``data/`` imports a dataset module (one that registers a task source) other than
  itself: the package imports them all to register them, and they share helpers only.
"""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "metarun"
ABOVE = (
    "matplotlib",
    "metarun.plots",
    "metarun.baselines",
    "metarun.train",
    "metarun.step",
    "metarun.experiment",
    "metarun.evaluate",
    "metarun.rundir",
    "metarun.resume",
    "metarun.logger",
    "metarun.report",
    "metarun.api",
    "metarun.cli",
    "metarun.sweep",
)


def imported(path: Path) -> set[str]:
    """Every module an import statement of ``path`` names (``from a import b``: ``a`` and
    ``a.b``, since ``b`` may be a module)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}: relative import"
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def within(name: str, packages) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def dataset_modules() -> set[str]:
    """The modules of data/ that register a task source (``@sources.register``)."""
    return {
        f"metarun.data.{path.stem}"
        for path in (SRC / "data").glob("*.py")
        if "@sources.register(" in path.read_text()
    }


def modules(package: str) -> list[Path]:
    return sorted((SRC / package).glob("*.py"))


def test_there_are_dataset_modules_to_check():
    assert {"metarun.data.sinusoid", "metarun.data.quadratic"} <= dataset_modules()


@pytest.mark.parametrize("path", modules("data") + modules("algos"), ids=lambda p: p.stem)
def test_data_and_algorithms_import_nothing_above_them(path):
    assert not {name for name in imported(path) if within(name, ABOVE)}


@pytest.mark.parametrize("path", modules("data"), ids=lambda p: p.stem)
def test_a_dataset_knows_no_algorithm_and_no_other_dataset(path):
    names = imported(path)
    assert not {name for name in names if within(name, ["metarun.algos"])}
    if path.stem != "__init__":
        others = dataset_modules() - {f"metarun.data.{path.stem}"}
        assert not {name for name in names if within(name, others)}


@pytest.mark.parametrize("path", modules("algos"), ids=lambda p: p.stem)
def test_an_algorithm_knows_no_dataset(path):
    assert not {name for name in imported(path) if within(name, ["metarun.data"])}

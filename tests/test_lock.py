"""requirements.lock agrees with pyproject.toml (offline: reads the two files only).

The lock is what `make install` and CI install; `make lock` writes it (uv pip compile). These
tests catch a pyproject.toml edited without `make lock`: a dependency the lock lacks or pins
outside its specifier, or a pin nothing in pyproject.toml needs any more.
"""

import re
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python 3.11+, the version the lock is for

ROOT = Path(__file__).resolve().parents[1]
# The one environment the lock is resolved for (Makefile, `lock`): CPython 3.11, Linux x86_64.
ENVIRONMENT = {
    "python_version": "3.11",
    "python_full_version": "3.11.7",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "extra": "",
}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;\\]+)\s*(?:;\s*([^\\#]+))?")


def _lock():
    """``{name: (version, [names it is pinned for])}`` from uv's annotated output."""
    pins, current = {}, None
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        stripped = line.strip()
        if match := PIN.match(line):
            name, _, version, marker = match.groups()
            if marker and not Marker(marker.strip()).evaluate(ENVIRONMENT):
                current = None
                continue
            current = canonicalize_name(name)
            pins[current] = (Version(version), [])
        elif current and stripped.startswith("#"):  # "# via optax" or "# via" then "#   optax"
            words = stripped.lstrip("#").split()
            words = words[1:] if words[:1] == ["via"] else words
            if words and not words[0].startswith("-"):  # not "-c constraints.txt"
                pins[current][1].append(canonicalize_name(words[0]))
    return pins


# The optional-dependency groups `make lock` resolves (`--extra dev --extra docs`): the lock, and
# so `make install`, holds them all.
LOCKED_EXTRAS = re.findall(r"--extra\s+(\S+)", (ROOT / "Makefile").read_text())


def _project():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _requirements():
    project = _project()
    extras = [r for name in LOCKED_EXTRAS for r in project["optional-dependencies"][name]]
    return [Requirement(r) for r in project["dependencies"] + extras]


def test_make_lock_resolves_every_optional_group():
    groups = _project()["optional-dependencies"]
    assert sorted(LOCKED_EXTRAS) == sorted(groups), (
        f"`make lock` resolves the extras {LOCKED_EXTRAS}, pyproject.toml has {sorted(groups)}: "
        "add `--extra NAME` to the Makefile's lock target, then run `make lock`"
    )


LOCK = _lock()


@pytest.mark.parametrize("requirement", _requirements(), ids=str)
def test_every_requirement_is_pinned_within_its_specifier(requirement):
    name = canonicalize_name(requirement.name)
    assert name in LOCK, f"{requirement} is not in requirements.lock: run `make lock`"
    version, _ = LOCK[name]
    assert requirement.specifier.contains(version, prereleases=True), (
        f"requirements.lock pins {name}=={version}, outside pyproject.toml's {requirement}: "
        "run `make lock`"
    )


def test_the_lock_pins_only_what_pyproject_needs():
    """Every pin is reachable from pyproject.toml's requirements through uv's ``# via``."""
    direct = {canonicalize_name(r.name) for r in _requirements()}
    needed, frontier = set(), set(direct)
    dependents = {}  # package -> what it is pinned for
    for name, (_, via) in LOCK.items():
        for parent in via:
            dependents.setdefault(parent, set()).add(name)
    while frontier:
        name = frontier.pop()
        needed.add(name)
        frontier |= dependents.get(name, set()) - needed
    stray = sorted(set(LOCK) - needed)
    assert not stray, f"requirements.lock pins {stray}, which pyproject.toml does not need"
    assert len(LOCK) > len(direct)  # the parser read uv's annotations, not an empty file

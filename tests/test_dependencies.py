"""The install is reproducible: requirements/lock.txt pins what pyproject.toml asks for, and the suite fails on
the project's own use of a deprecated jsonargparse API (docs/dependencies.md)."""

from __future__ import annotations

import re
import warnings

import jsonargparse
import pytest
import tomllib
from conftest import PROJECT_ROOT
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

LOCK = PROJECT_ROOT / "requirements" / "lock.txt"


def _pins() -> dict[str, Version]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"{LOCK.name}: not an exact pin: {line!r}"
            pins[canonicalize_name(name)] = Version(version)
    return pins


def _requirements() -> list[tuple[str, Requirement]]:
    """Every requirement of pyproject.toml, with the extra that asks for it ("" for the base install)."""
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    required = [("", Requirement(r)) for r in project["dependencies"]]
    for extra, requirements in project.get("optional-dependencies", {}).items():
        required += [(extra, Requirement(r)) for r in requirements]
    return required


def test_the_lock_pins_every_requirement_of_every_extra_within_its_range() -> None:
    """A requirement the lock lacks would be installed at whatever is newest: `make lock` after adding it."""
    pins = _pins()
    for extra, requirement in _requirements():
        where = f"{requirement} (pyproject.toml{f', extra {extra}' if extra else ''})"
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{where} is not in {LOCK.name}: run `make lock`"
        assert requirement.specifier.contains(pins[name], prereleases=True), f"{where}: {LOCK.name} pins {pins[name]}"


def test_the_lock_keeps_the_torch_the_makefile_installs() -> None:
    """torch and torchvision stay at the releases these machines serve from local disk (the Makefile's TORCH)."""
    line = next(line for line in (PROJECT_ROOT / "Makefile").read_text().splitlines() if line.startswith("TORCH :="))
    pinned = dict(re.findall(r'"([\w-]+)==([^"]+)"', line))
    assert set(pinned) == {"torch", "torchvision"}
    pins = _pins()
    for name, version in pinned.items():
        assert pins[name] == Version(version), f"{LOCK.name} pins {name} {pins[name]}, the Makefile {version}"


def _call_deprecated_api_from(module: str) -> None:
    """`ArgumentParser.instantiate_classes` (deprecated in jsonargparse 4.49, gone in 5.0) called by code of
    `module`."""
    code = ("from jsonargparse import ArgumentParser\nparser = ArgumentParser()\n"
            "parser.instantiate_classes(parser.parse_args([]))\n")
    exec(compile(code, f"<{module}>", "exec"), {"__name__": module})


def test_a_deprecated_jsonargparse_call_fails_the_suite_from_the_projects_code_only() -> None:
    if not hasattr(jsonargparse.ArgumentParser, "instantiate_classes"):
        pytest.skip(f"jsonargparse {jsonargparse.__version__} has removed instantiate_classes: update this probe")
    with warnings.catch_warnings(record=True) as caught:  # pyproject's filters stay in force inside
        _call_deprecated_api_from("pytorch_lightning.cli")  # LightningCLI's own calls: ignored
    assert not [w for w in caught if issubclass(w.category, DeprecationWarning)]
    with pytest.raises(DeprecationWarning, match="instantiate_classes"):  # even after Lightning's call of the same API
        _call_deprecated_api_from("mnist_lightning.probe")

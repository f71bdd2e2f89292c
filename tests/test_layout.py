"""The package's shape: modules that never import each other in a circle, and a default config
that ships inside the package, so an installed wheel runs with the same defaults as the checkout."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from conftest import PROJECT_ROOT

PACKAGE = "mnist_lightning"


def module_files(package_dir: Path, package: str) -> dict[str, Path]:
    """Every module of the package and its sub-packages, by dotted name (a package by its `__init__`)."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = [package, *path.relative_to(package_dir).with_suffix("").parts]
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def import_graph(package_dir: Path, package: str) -> dict[str, set[str]]:
    """Which modules of the package each module imports (at the top or inside a function), by module name.

    `from pkg.x import y`, `from pkg import x`, `import pkg.x` and the relative forms all count;
    `from pkg.sub import Name` (not a module) is an import of the sub-package's `__init__`, named `pkg.sub`.
    """
    modules = module_files(package_dir, package)

    def owner(dotted: str) -> str | None:
        """The package's module that `dotted` names, or the nearest package above it; None outside the package."""
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                edges.update(filter(None, (owner(alias.name) for alias in node.names)))
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the module's own package
                    base = name if is_package else name.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        base = base.rpartition(".")[0]
                    source = ".".join(filter(None, [base, node.module]))
                else:
                    source = node.module or ""
                if owner(source) is None:
                    continue
                for alias in node.names:  # `from pkg.sub import x`: the module pkg.sub.x where there is one
                    edges.add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else owner(source))
        edges.discard(name)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as `[a, b, ..., a]`, or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        path.append(node)
        for target in sorted(graph.get(node, ())):
            cycle = visit(target)
            if cycle:
                return cycle
        path.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start)
        if cycle:
            return cycle
    return None


def test_no_two_modules_of_the_package_import_each_other_directly_or_through_a_chain():
    graph = import_graph(PROJECT_ROOT / PACKAGE, PACKAGE)
    assert f"{PACKAGE}.models.classifier" in graph[f"{PACKAGE}.cli.cli"]  # the graph is read, not empty
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


# Lower layers never import higher ones (docs/architecture.md): the data never knows the model, models never
# know the CLI, checkpoints know neither. Release 0.1.0's one-line modules (model.py, ...) re-export from above.
LAYERS = [("errors", "types", "atomic", "commands", "outputs"), ("checkpoints",), ("data",), ("models",),
          ("callbacks", "loggers"), ("cli",),
          ("sweeps", "export", "onnx_refusals", "serve", "model", "fast", "schedules", "augment", "figures", ""),
          ("__main__",)]


def layer_of(module: str) -> int:
    top = module.removeprefix(PACKAGE).lstrip(".").split(".")[0]
    return next(i for i, names in enumerate(LAYERS) if top in names)


def test_lower_layers_never_import_higher_ones():
    graph = import_graph(PROJECT_ROOT / PACKAGE, PACKAGE)
    assert f"{PACKAGE}.data.datamodule" in graph and f"{PACKAGE}.cli.runs" in graph  # sub-packages are read
    upward = sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets if layer_of(b) > layer_of(a))
    assert upward == [], upward


def test_the_layer_check_sees_an_upward_import(tmp_path):
    package = tmp_path / PACKAGE
    (package / "data").mkdir(parents=True)
    (package / "models").mkdir()
    for init in (package, package / "data", package / "models"):
        (init / "__init__.py").write_text("")
    (package / "models" / "net.py").write_text("X = 1\n")
    (package / "data" / "loader.py").write_text(f"def f():\n    from {PACKAGE}.models.net import X\n")
    graph = import_graph(package, PACKAGE)
    assert f"{PACKAGE}.models.net" in graph[f"{PACKAGE}.data.loader"]
    assert layer_of(f"{PACKAGE}.models.net") > layer_of(f"{PACKAGE}.data.loader")


def test_the_cycle_check_sees_every_form_of_import(tmp_path):
    """The check above can fail: each import form closes a cycle in a package written for the purpose."""
    forms = {"from pkg.b import f": "pkg.b", "from pkg import b": "pkg.b", "import pkg.b": "pkg.b",
             "from . import b": "pkg.b", "from .b import f": "pkg.b", "from pkg import f": "pkg"}
    for case, (statement, target) in enumerate(forms.items()):
        package = tmp_path / f"case{case}" / "pkg"
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("from pkg.a import f\n")
        (package / "a.py").write_text(f"def g():\n    {statement}\n")  # a lazy import counts too
        (package / "b.py").write_text("import os\nfrom pkg.a import g\n")
        graph = import_graph(package, "pkg")
        assert target in graph["pkg.a"], (statement, graph)
        assert find_cycle(graph) is not None, statement
    (package / "a.py").write_text("import os\n")
    assert find_cycle(import_graph(package, "pkg")) is None


@pytest.mark.slow
def test_the_installed_wheel_runs_with_the_default_config_inside_the_package(tmp_path):
    """Built and unpacked like an install, run where the checkout cannot be imported: the wheel's own
    `default.yaml` gives `fit` its defaults. A real process: its subject is the installed package."""
    source = tmp_path / "source"  # the project's build inputs only: no stale build/ or egg-info of the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(PROJECT_ROOT / name, source / name)
    shutil.copytree(PROJECT_ROOT / PACKAGE, source / PACKAGE, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-q", "-w", str(wheels), str(source)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    [wheel] = wheels.glob("*.whl")
    installed = tmp_path / "installed"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(installed)
    shipped = {p.relative_to(PROJECT_ROOT).as_posix() for p in (PROJECT_ROOT / PACKAGE).rglob("*.py")}
    shipped |= {f"{PACKAGE}/default.yaml"}
    shipped |= {f"{PACKAGE}/serve/page/draw.{suffix}" for suffix in ("html", "js", "css")}  # serve's page
    assert shipped <= names, sorted(shipped - names)  # every module: nothing falls back to the checkout

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(installed)}  # only the unpacked wheel, and a folder outside the checkout
    find = f"import importlib.util; print(importlib.util.find_spec({PACKAGE!r}).origin)"
    origin = subprocess.run([sys.executable, "-c", find],
                            cwd=elsewhere, env=env, capture_output=True, text=True, timeout=60)
    assert Path(origin.stdout.strip()).parent == installed / PACKAGE, origin.stdout + origin.stderr
    result = subprocess.run([sys.executable, "-m", PACKAGE, "fit", "--print_config"], cwd=elsewhere, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    trainer = config["trainer"]
    assert trainer["max_epochs"] == 3
    assert trainer["logger"]["class_path"] == "pytorch_lightning.loggers.TensorBoardLogger"
    callbacks = [c["class_path"] for c in trainer["callbacks"]]
    assert callbacks == ["pytorch_lightning.callbacks.ModelCheckpoint",
                         "pytorch_lightning.callbacks.LearningRateMonitor",
                         "mnist_lightning.callbacks.ValidationFigures"], callbacks
    net = config["model"]["init_args"]["net"]
    assert net["class_path"] == "mnist_lightning.models.MLP" and net["init_args"]["hidden_sizes"] == [50]

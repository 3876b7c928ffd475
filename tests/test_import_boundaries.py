"""Who may import whom: the framework-free parts stay free of verl and Ray, data preparation and
evaluation stay free of the CPU runtime, and data preparation does not need the graders.

Checked twice: statically, over every import statement in the files (imports inside functions
included, which a runtime check only sees when the function runs), and at runtime, by importing
the modules in a fresh interpreter and listing what got loaded.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "exgrpo_verl"
FRAMEWORKS = ("verl", "ray", "torch.distributed")

# (a module or package of exgrpo_verl, modules it must not import)
BOUNDARIES = [
    ("algorithm.py", FRAMEWORKS),
    ("mixing.py", FRAMEWORKS),
    ("experience", FRAMEWORKS + ("torch",)),
    ("answers.py", FRAMEWORKS + ("torch", "exgrpo_verl")),
    ("hf_generation.py", FRAMEWORKS + ("exgrpo_verl.cpu_runtime",)),
    ("data", ("exgrpo_verl.cpu_runtime", "exgrpo_verl.evaluation")),
    ("evaluation", ("exgrpo_verl.cpu_runtime",)),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every module an import statement in the file names, relative imports resolved; for
    `from a import b` both `a` and `a.b` (b may be a submodule)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def is_within(name: str, forbidden: str) -> bool:
    return name == forbidden or name.startswith(forbidden + ".")


def files_of(target: str) -> list[Path]:
    path = PACKAGE / target
    return sorted(path.rglob("*.py")) if path.is_dir() else [path]


@pytest.mark.parametrize("target, forbidden", BOUNDARIES, ids=[target for target, _ in BOUNDARIES])
def test_no_import_statement_crosses_the_boundary(target, forbidden):
    files = files_of(target)
    assert files, f"exgrpo_verl/{target} not found: update BOUNDARIES"
    crossings = [
        f"{path.relative_to(PACKAGE.parent)} imports {name}"
        for path in files
        for name in sorted(imported_modules(path))
        if any(is_within(name, module) for module in forbidden)
    ]
    assert not crossings, "\n".join(crossings)


@pytest.mark.parametrize("target, forbidden", BOUNDARIES, ids=[target for target, _ in BOUNDARIES])
def test_importing_loads_nothing_across_the_boundary(target, forbidden):
    modules = [module_name(path) for path in files_of(target)]
    # `import torch` itself loads torch.distributed: that one is covered by the static check.
    checked = [module for module in forbidden if module != "torch.distributed" and module != "exgrpo_verl"]
    probe = (
        f"import importlib, json, sys\nfor name in {modules!r}: importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if any(m == f or m.startswith(f + '.') for f in {checked!r}))))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_the_static_check_sees_lazy_and_relative_imports():
    names = imported_modules(PACKAGE / "evaluation" / "generation.py")
    assert "exgrpo_verl.hf_generation.HFGenerationEngine" in names  # imported inside a function
    assert "exgrpo_verl.experience.buffer" in imported_modules(PACKAGE / "experience" / "__init__.py")  # `from .buffer`

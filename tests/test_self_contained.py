"""A clone is self-contained: no code, test, recipe or doc points at a path outside the repository.

The development machines keep reference material in a folder beside the checkout; a user's
clone has no such neighbour, so any reference to it breaks there (the evaluation files the
tests need ship in exgrpo_verl/data/eval/ instead).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# A sibling folder of the checkout, its data folder, the development machines' work tree, the
# old env override. Spelled in pieces, so that this file does not itself contain what it refuses.
SIBLING, SIBLING_DATA = "../" + "shared", "/shared" + "/data"
WORK_TREE, ENV_OVERRIDE = "/" + "work/", "EXGRPO_" + "SHARED_DATA"
OUTSIDE_REFERENCES = re.compile(
    "|".join([re.escape(SIBLING) + r"\b", re.escape(SIBLING_DATA) + r"\b", re.escape(WORK_TREE), ENV_OVERRIDE]))
NOT_SOURCE = {".git", ".venv", "__pycache__", ".pytest_cache", ".hypothesis", "outputs", "results", "data"}


def repository_files() -> list[Path]:
    """The files a clone has: git's tracked and not-ignored files, or the tree outside build folders."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        return [REPO_ROOT / name for name in listed if (REPO_ROOT / name).is_file()]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (e.g. an unpacked archive)
        top = [path for path in REPO_ROOT.iterdir() if path.name not in NOT_SOURCE]
        files = [path for folder in top for path in ([folder] if folder.is_file() else folder.rglob("*"))]
        return [path for path in files if path.is_file() and not NOT_SOURCE & set(path.parts)]


def outside_references(data: bytes) -> list[tuple[int, str]]:
    """(line number, line) for each line of a text file that names a path outside the repository."""
    if b"\0" in data:  # binary (parquet, png): no paths to follow
        return []
    lines = data.decode("utf-8", errors="replace").splitlines()
    return [(number, line.strip()[:120]) for number, line in enumerate(lines, 1) if OUTSIDE_REFERENCES.search(line)]


def test_no_file_references_a_path_outside_the_repository():
    files = [path for path in repository_files() if path != Path(__file__).resolve()]
    assert any(path.name == "README.md" for path in files) and any(path.suffix == ".py" for path in files)
    found = [
        f"{path.relative_to(REPO_ROOT)}:{number}: {line}"
        for path in files
        for number, line in outside_references(path.read_bytes())
    ]
    assert not found, "references outside the repository (a clone has none of these):\n" + "\n".join(found)


def test_the_check_finds_each_kind_of_reference():
    text = f"ok\nsee {SIBLING}/data/eval\n{WORK_TREE}x/spec.md\n${{{ENV_OVERRIDE}}}/eval\nshared data/x\nx{SIBLING_DATA}/y\n"
    assert [number for number, _ in outside_references(text.encode())] == [2, 3, 4, 6]
    assert outside_references(b"PAR1\0" + SIBLING.encode()) == []

"""Package layering (DESIGN.md): the CNN path shares the preprocessing and QC with the conventional
methods through neutral modules and never reaches into ``perfnet.conventional``."""

from __future__ import annotations

import ast
from pathlib import Path

import perfnet

PACKAGE = Path(perfnet.__file__).parent


def imported_modules(path: Path, package: str | None = None) -> set[str]:
    """Every module a source file imports (absolute names; relative imports resolved against
    ``package``, by default the file's own package under perfnet)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    if package is None:
        package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def test_inference_does_not_import_conventional() -> None:
    files = sorted((PACKAGE / "inference").rglob("*.py"))
    assert len(files) >= 4  # __init__, cnn, inputs, targets, weights
    offenders = {
        str(f.relative_to(PACKAGE)): sorted(
            m for m in imported_modules(f) if m.startswith("perfnet.conventional")
        )
        for f in files
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_shared_modules_do_not_import_conventional() -> None:
    """The shared preprocessing and the QC module sit below both method families."""
    for path in [PACKAGE / "qc.py", *sorted((PACKAGE / "preprocess").rglob("*.py"))]:
        assert not [m for m in imported_modules(path) if m.startswith("perfnet.conventional")], path


def test_the_check_sees_an_import(tmp_path: Path) -> None:
    """The parser catches the forms a reach into conventional could take (also inside functions)."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import perfnet.conventional.aif\nfrom perfnet.conventional import qc\n"
        "def f():\n    from ..conventional.pipeline import analyze\n"
    )
    found = imported_modules(probe, "perfnet.inference")
    expected = {"perfnet.conventional.aif", "perfnet.conventional.qc", "perfnet.conventional.pipeline"}
    assert expected <= found

"""Package layering (README "Architecture"): cassi/, data/ -> models/ -> calib/ -> evaluation/, and training/
beside evaluation/ (neither imports the other; both may use calib/, training for the calibrated instrument of
an operator file, calib.instrument); training/ and evaluation/ use no private (underscore) name of another
package."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ALLOWED = {"cassi": set(), "data": {"cassi"}, "models": {"cassi", "data"}, "calib": {"cassi", "data", "models"},
           "evaluation": {"cassi", "data", "models", "calib"}, "training": {"cassi", "data", "models", "calib"}}


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) of every import statement in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [alias.name for alias in node.names]))
    return found


def test_no_package_imports_upward_or_sideways():
    wrong = []
    for package, allowed in ALLOWED.items():
        for path in sorted((REPO / package).rglob("*.py")):
            for module, _ in imports(path):
                top = module.split(".")[0]
                if top in ALLOWED and top != package and top not in allowed:
                    wrong.append(f"{path.relative_to(REPO)} imports {module}")
    assert not wrong, "\n".join(wrong)


# The one exception, with its reason: Lightning 2.6's fit loop restarts a finished epoch when a run resumes under
# --trainer.max_steps (training.cli.ResumableFitLoop overrides its ``restarting`` setter; no public hook reaches it).
PRIVATE_IMPORTS_ALLOWED = {("training/cli.py", "pytorch_lightning.loops.fit_loop"),
                           ("training/cli.py", "pytorch_lightning.loops.loop")}


def test_training_and_evaluation_use_no_private_names_of_other_packages():
    wrong = []
    for package in ("training", "evaluation"):
        for path in sorted((REPO / package).rglob("*.py")):
            for module, names in imports(path):
                private = [name for name in names if name.startswith("_") and not name.startswith("__")]
                hidden = [part for part in module.split(".") if part.startswith("_") and not part.startswith("__")]
                if (path.relative_to(REPO).as_posix(), module) in PRIVATE_IMPORTS_ALLOWED:
                    continue
                if (private or hidden) and module.split(".")[0] != package:
                    wrong.append(f"{path.relative_to(REPO)}: from {module} import {', '.join(names)}")
            text = path.read_text(encoding="utf-8")
            for node in ast.walk(ast.parse(text)):
                if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                        and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
                    wrong.append(f"{path.relative_to(REPO)}:{node.lineno}: .{node.attr}")
    assert not wrong, "\n".join(wrong)

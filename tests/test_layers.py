"""Package layering (README "Architecture"): cassi/, data/ -> models/ -> calib/ -> evaluation/, and training/
beside evaluation/ (neither imports the other; both may use calib/, training for the calibrated instrument of
an operator file, calib.instrument); training/ and evaluation/ use no private (underscore) name of another
package, neither imported nor inherited (``self._x`` of a third-party base class), but for the listed exceptions."""
from __future__ import annotations

import ast
import importlib
import inspect
import re
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


# The exceptions, with their reasons: (file, private attribute of a third-party base class it uses on ``self``).
PRIVATE_ATTRIBUTES_ALLOWED = {
    ("training/loggers.py", "_wandb_init"):
        "Lightning 2.6's WandbLogger passes wandb.init anonymous=None (or 'allow'), and wandb 0.31 warns 'The "
        "anonymous setting has no effect' of any value given; only its wandb.init arguments, _wandb_init, can drop "
        "it (its **kwargs cannot name anonymous, a parameter of its own, and wandb.init has no public switch)",
}


def third_party_private_names(cls: type) -> set[str]:
    """Private names that ``cls``'s bases outside this project define or use on ``self`` (their source)."""
    names = set()
    for base in cls.__mro__[1:]:
        if base.__module__.split(".")[0] in ALLOWED or base is object:
            continue
        names |= {name for name in vars(base) if name.startswith("_") and not name.startswith("__")}
        try:
            names |= set(re.findall(r"\bself\.(_[A-Za-z]\w*)", inspect.getsource(base)))
        except (OSError, TypeError):                 # a base without Python source
            pass
    return names


def test_training_and_evaluation_use_no_private_attributes_of_third_party_base_classes():
    used, wrong = set(), []
    for package in ("training", "evaluation"):
        for path in sorted((REPO / package).rglob("*.py")):
            module = importlib.import_module(".".join(path.relative_to(REPO).with_suffix("").parts))
            for node in ast.parse(path.read_text(encoding="utf-8")).body:
                if not isinstance(node, ast.ClassDef):
                    continue
                private = third_party_private_names(getattr(module, node.name))
                for sub in ast.walk(node):
                    if not (isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name)
                            and sub.value.id in ("self", "cls") and sub.attr in private):
                        continue
                    key = (path.relative_to(REPO).as_posix(), sub.attr)
                    if key in PRIVATE_ATTRIBUTES_ALLOWED:
                        used.add(key)
                    else:
                        wrong.append(f"{key[0]}:{sub.lineno}: {node.name} uses its base class's self.{sub.attr}")
    assert not wrong, "\n".join(wrong)
    unused = set(PRIVATE_ATTRIBUTES_ALLOWED) - used
    assert not unused, f"exceptions no longer needed: {unused}"

"""The house's layers import downwards (README "Layout"): every `import` in src/slimkit, at module level or inside a
function, goes to the same layer or a lower one. A function-level import that dodges a cycle is
still an upward import, so it is counted too."""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "slimkit"

#: layer of each package (or module, where a package spans two floors); higher imports lower, never the reverse
LAYERS = {
    "core": 0, "recipes": 0,
    "zoo": 1,
    "evaluate": 2, "export": 2, "runtimes": 2, "ondevice": 2,
    # the recovery trainer (fine-tune config, losses, the loop) serves every technique family
    "distill.trainer": 3, "distill.finetune": 3, "distill.losses": 3,
    "quantize": 4, "prune": 4, "factorize": 4, "distill": 4,
    "report": 5,
    "pipeline": 6,
    "search": 7,
    "load": 8,
    "api": 9, "cli": 9, "__init__": 10, "__main__": 10,
}


#: the built-in models and data are reached only through spec resolution and the faces
ZOO_USERS = {"zoo", "load", "cli", "api"}


def _layer(parts: list[str]) -> int | None:
    for k in (".".join(parts[:2]), parts[0]):
        if k in LAYERS:
            return LAYERS[k]
    return None


def _imports(path: Path):
    rel = path.relative_to(SRC).with_suffix("")
    pkg = list(rel.parts[:-1])  # the package the module lives in
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = pkg[: len(pkg) - (node.level - 1)]
            target = base + (node.module.split(".") if node.module else [])
            if node.module is None:  # from . import x, y
                for a in node.names:
                    yield node.lineno, target + [a.name]
            else:
                yield node.lineno, target
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("slimkit."):
            yield node.lineno, node.module.split(".")[1:]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("slimkit."):
                    yield node.lineno, a.name.split(".")[1:]


def test_every_import_goes_down_or_sideways():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 50
    upward = []
    for f in files:
        parts = list(f.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        own = _layer(parts)
        assert own is not None, f"{f.relative_to(SRC)} is in no layer: add its package to LAYERS"
        for line, target in _imports(f):
            if not target:
                continue
            theirs = _layer(target)
            if theirs is not None and theirs > own:
                upward.append(f"{f.relative_to(SRC)}:{line} imports {'.'.join(target)}")
            if target[0] == "zoo" and parts[0] not in ZOO_USERS:
                upward.append(f"{f.relative_to(SRC)}:{line} imports {'.'.join(target)} (only {sorted(ZOO_USERS)} "
                              "may: techniques and measurements work on any user's model and data)")
    assert not upward, "imports that go up a layer:\n" + "\n".join(upward)


def test_the_layer_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The check itself can fail: a core module importing the pipeline (inside a function) is seen, with its line."""
    import sys

    fake = tmp_path / "slimkit"
    (fake / "core").mkdir(parents=True)
    (fake / "core" / "bad.py").write_text("def f():\n    from ..pipeline.runner import compress\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", fake)
    got = list(_imports(fake / "core" / "bad.py"))
    assert got == [(2, ["pipeline", "runner"])] and _layer(got[0][1]) > _layer(["core", "bad"])

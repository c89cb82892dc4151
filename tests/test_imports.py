"""The direction of imports in ../shared/DESIGN.md, read from the source with ``ast``.

- ``embodied.specs``, ``embodied.errors`` and ``embodied.registry`` (leaf vocabulary) may be imported by all.
- The core of ``embodied`` (language, tokens, model, train, checkpoint, adapt, config)
  never imports envs, datasets, policies or the application layer.
- ``envs`` and ``datasets`` never import each other, ``policies`` or anything of
  ``embodied`` beyond the shared leaves.
- ``policies`` may use the core and ``datasets``, not ``envs`` or the application layer.
- Only the application layer (evaluate, collect, report, bench, shielding, cli, __main__) wires everything.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"embodied": "embodied", "envs": "embodied.envs", "datasets": "embodied.datasets", "policies": "embodied.policies"}
SHARED = {"embodied.specs", "embodied.errors", "embodied.registry", "embodied"}
APP = {"embodied.evaluate", "embodied.bench_reward", "embodied.rl", "embodied.cli_rl", "embodied.collect", "embodied.training_data",
       "embodied.report", "embodied.bench", "embodied.bench_data", "embodied.bench_train", "embodied.bench_policy", "embodied.bench_dynamics",
       "embodied.shielding", "embodied.cli", "embodied.cli_data", "embodied.cli_adapt", "embodied.adapt_data", "embodied.bench_adapt",
       "embodied.__main__"}
HEAVY = {"torch", "mujoco", "gymnasium", "zarr", "cv2", "av", "sentence_transformers", "matplotlib", "stable_baselines3", "numpy"}


def layer(module: str) -> str:
    for pkg in ("embodied.envs", "embodied.datasets", "embodied.policies"):
        if module == pkg or module.startswith(pkg + "."):
            return pkg.split(".")[1]
    if module in SHARED:
        return "shared"
    if module in APP:
        return "app"
    return "core" if module.startswith("embodied") else "external"


ALLOWED = {
    "shared": {"shared", "external"},
    "core": {"shared", "core", "external"},
    "envs": {"shared", "envs", "external"},
    "datasets": {"shared", "datasets", "external"},
    "policies": {"shared", "core", "datasets", "policies", "external"},
    "app": {"shared", "core", "envs", "datasets", "policies", "app", "external"},
}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT)
    parts = [FOLDERS[rel.parts[0]], *rel.parts[1:]]
    parts[-1] = parts[-1][:-3]
    name = ".".join(p for p in ".".join(parts).split(".") if p)
    return name[: -len(".__init__")] if name.endswith(".__init__") else name


def imports_of(source: str, module: str, is_package: bool) -> list[tuple[str, int]]:
    """(imported module, line) pairs, relative imports resolved against ``module``."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((target, node.lineno))
            if target in ("embodied",) or target.startswith("embodied."):  # from embodied import envs
                out += [(f"{target}.{a.name}", node.lineno) for a in node.names if layer(f"{target}.{a.name}") != "core"]
    return out


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    src = layer(module)
    bad = []
    for target, line in imports_of(source, module, is_package):
        dst = layer(target)
        if dst not in ALLOWED[src]:
            bad.append(f"{module}:{line} ({src}) imports {target} ({dst})")
    return bad


def sources():
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            yield path, module_name(path)


def test_no_import_against_the_design_direction():
    bad = []
    for path, mod in sources():
        bad += violations(path.read_text(), mod, path.name == "__init__.py")
    assert not bad, "\n".join(bad)


def test_checker_catches_wrong_way_arrows():
    assert violations("from embodied.datasets import store", "embodied.envs.tabletop")
    assert violations("from ..datasets import video", "embodied.envs.tabletop")
    assert violations("import embodied.envs", "embodied.model")
    assert violations("from embodied import policies", "embodied.train")
    assert violations("from embodied.envs import make", "embodied.policies.base")
    assert not violations("from embodied.specs import STATE", "embodied.envs.tabletop")
    assert not violations("from .tabletop import TabletopEnv", "embodied.envs", is_package=True)
    assert not violations("from embodied.envs import make", "embodied.cli")


def test_cli_imports_no_heavy_module_at_start():
    """`embodied --help` stays fast: the CLI's module-level imports pull in nothing heavy."""
    import subprocess

    code = (
        "import sys, embodied.cli as c; c.build_parser().format_help(); "
        f"print(sorted(m for m in {sorted(HEAVY)!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"

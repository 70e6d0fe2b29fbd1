"""Imports point one way: down the layers below, with no cycles, and the config stays light.

The import graph is read from the source with `ast`, imports inside functions included.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "platform" / "alignray"

# Lowest first: a module may import from its own layer and the ones before it, never after.
LAYERS = (
    "logs",  # where output goes (standard library only)
    "host",  # the CPU this runs on (standard library only)
    "config",  # typed config (pydantic only)
    "configdoc",  # the config schemas described: `alignray config show`, the documentation's tables
    "io",  # atomic writes
    "stats",  # interval arithmetic: Wilson, paired Newcombe, bootstrap, across seeds (numpy, scipy)
    "data",  # conversations, prompt sources, pair files
    "principles",  # principle sets
    "cluster",  # Ray
    "tracking",  # MLflow
    "models",  # model folders, models:/ resolution, token handling (Seq, Tokenize, pad)
    "sampling",  # vLLM samplers, pools, endpoints, model clients (open_model)
    "rewards",  # offline judges, reward scorers, scalarizers
    "feedback",  # preference-data simulation
    "train",  # losses, trainers, PPO
    "evaluate",  # win rates, reports
    "serve",  # Ray Serve applications
    "stages",  # the stage registry: name, config schema, run(cfg) -> StageResult
    "pipelines",  # the recipes that chain stages
    "cli",  # the `alignray` command
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """{module: the alignray modules it imports anywhere in its source}."""
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                # `from pkg import mod` imports the module pkg.mod
                targets |= {f"{base}.{a.name}" if f"{base}.{a.name}" in paths else base for a in node.names}
        graph[name] = {t for t in targets if t in paths and t != name}
    return graph


def layer(module: str) -> int:
    """The module's index in LAYERS; the bare package `alignray` (empty) is below them all."""
    if module == "alignray":
        return -1
    top = module.split(".")[1]
    assert top in LAYERS, f"{module}: {top!r} is in no layer; add it to LAYERS in {__file__}"
    return LAYERS.index(top)


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    assert "alignray.models.mlflow_model" in graph["alignray.models.registry"]  # imported inside _fetch
    assert "alignray.rewards.scorers" in graph["alignray.evaluate.stage"]  # inside _agreement


def test_no_import_points_to_a_higher_layer():
    graph = import_graph()
    upward = [
        f"{m} imports {t}, a higher layer"
        for m, targets in sorted(graph.items())
        for t in sorted(targets) if layer(t) > layer(m)
    ]
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def test_no_import_cycles():
    graph = import_graph()
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m], _ = "open", path.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == "open":
                return path[path.index(t):] + [t]
            if t not in state and (cycle := visit(t)):
                return cycle
        state[m], _ = "done", path.pop()
        return None

    for m in sorted(graph):
        cycle = m not in state and visit(m)
        assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_importing_the_config_loads_nothing_heavy():
    code = (
        "import sys, alignray.config; "
        "print(' '.join(m for m in sys.modules if m.split('.')[0] in"
        " ('torch', 'transformers', 'ray', 'vllm', 'mlflow', 'deepspeed', 'pandas', 'pyarrow') or m.startswith('alignray.')))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PACKAGE.parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.split() == ["alignray.config"]

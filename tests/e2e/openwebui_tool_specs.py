"""Regenerates openwebui_builtin_tools.json: the `tools` Open WebUI sends for its built-in tools,
computed by Open WebUI's own code, not retyped.

Open WebUI (0.12.4) turns each built-in tool function of `open_webui/tools/builtin.py` into an
OpenAI function spec with `build_builtin_tool_spec_json` (`open_webui/utils/tools.py`: the
function's signature and docstring -> a pydantic model -> langchain-core's
`convert_to_openai_function` -> `clean_openai_tool_schema`). This script runs exactly those
functions, taken from the source file, on the real `builtin.py`; the rest of Open WebUI (its
database models, routers, ...) is stubbed, as only the signatures and docstrings matter.

Not part of the suite (it needs Open WebUI's source and its pins, kept out of the project's venv):

    pip download open-webui==0.12.4 --no-deps -d /tmp/owui
    unzip -q /tmp/owui/open_webui-0.12.4-py3-none-any.whl 'open_webui/*.py' -d /tmp/owui/src
    python -m venv /tmp/owui/venv
    /tmp/owui/venv/bin/pip install langchain-core==1.4.8 pydantic==2.13.4 fastapi==0.136.3 aiohttp pyyaml
    /tmp/owui/venv/bin/python tests/e2e/openwebui_tool_specs.py /tmp/owui/src/open_webui \\
        tests/e2e/openwebui_builtin_tools.json
"""

from __future__ import annotations

import ast
import copy
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import inspect
import json
import re
import sys
import types
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any, get_type_hints
from unittest.mock import MagicMock

VERSION = "0.12.4"

# The built-in tools `get_builtin_tools` (open_webui/utils/tools.py) attaches, by category (a
# model's `meta.builtinTools` switches each category off), in its order, for the default setup
# of a fresh install: the first account (an admin), a saved chat, memory on (ENABLE_MEMORIES and
# the chat's `features.memory` default to true), notes, automations and calendar enabled, no
# knowledge attached to the model (and ENABLE_KB_EXEC off), web search, image generation, code
# interpreter, channels, subagents and user webhooks off, no skills selected.
CATEGORIES: dict[str, list[str]] = {
    "time": ["get_current_timestamp", "calculate_timestamp"],
    "user_input": ["ask_user"],
    "knowledge": [
        "list_knowledge_bases",
        "search_knowledge_bases",
        "query_knowledge_bases",
        "grep_knowledge_files",
        "search_knowledge_files",
        "query_knowledge_files",
        "view_knowledge_file",
    ],
    "chats": ["search_chats", "view_chat"],
    "memory": [
        "search_memories",
        "list_memory_paths",
        "read_memory_path",
        "list_memories",
        "update_memory",
        "add_memory",
        "replace_memory_content",
        "delete_memory",
    ],
    "notes": ["search_notes", "view_note", "write_note", "replace_note_content"],
    # An admin may always create skills (others need the workspace.skills permission).
    "skills": ["create_skill"],
    # Only in a saved chat (the task list lives on the chat's row).
    "tasks": ["create_tasks", "update_task"],
    "automations": [
        "create_automation",
        "update_automation",
        "list_automations",
        "toggle_automation",
        "delete_automation",
    ],
    "calendar": [
        "search_calendar_events",
        "create_calendar_event",
        "update_calendar_event",
        "delete_calendar_event",
    ],
}

# Defaults from open_webui/env.py that appear in the schemas.
ENV_DEFAULTS = {
    "KNOWLEDGE_GREP_MAX_MATCHES": 50,
    "VIEW_FILE_MAX_CHARS": 100_000,
    "VIEW_FILE_DEFAULT_MAX_CHARS": 10_000,
}

# utils/tools.py: the functions that build a built-in tool's spec.
SPEC_FUNCTIONS = {
    "parse_description",
    "parse_docstring",
    "convert_function_to_pydantic_model",
    "clean_properties",
    "clean_openai_tool_schema",
    "get_builtin_function_introspection",
    "build_builtin_tool_spec_json",
}


class _Stub(types.ModuleType):
    """An Open WebUI module that is not needed: every attribute is a mock."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        value = MagicMock(name=f"{self.__name__}.{name}")
        setattr(self, name, value)
        return value


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Loads the real `builtin.py` and `skill_files.py` (its tools' argument models); stubs the
    rest of `open_webui`."""

    def __init__(self, source: Path) -> None:
        self.real = {
            "open_webui.tools.builtin": source / "tools" / "builtin.py",
            "open_webui.utils.skill_files": source / "utils" / "skill_files.py",
        }

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname in self.real:
            return importlib.util.spec_from_file_location(fullname, self.real[fullname])
        if fullname == "open_webui" or fullname.startswith("open_webui."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = _Stub(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        pass


def spec_builder(source: Path) -> Callable[[Callable[..., Any]], str]:
    """`build_builtin_tool_spec_json` from utils/tools.py, with what it needs in scope."""
    from langchain_core.utils.function_calling import convert_to_openai_function
    from pydantic import BaseModel, Field, create_model

    tree = ast.parse((source / "utils" / "tools.py").read_text())
    wanted = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in SPEC_FUNCTIONS]
    scope: dict[str, Any] = {
        "__name__": "open_webui.utils.tools",
        "re": re,
        "copy": copy,
        "inspect": inspect,
        "Any": Any,
        "Callable": Callable,
        "get_type_hints": get_type_hints,
        "create_model": create_model,
        "Field": Field,
        "BaseModel": BaseModel,
        "cache": cache,
        "convert_pydantic_model_to_openai_function_spec": convert_to_openai_function,
        "JSONCodec": types.SimpleNamespace(dumps=json.dumps, loads=json.loads),
    }
    exec(compile(ast.Module(body=list(wanted), type_ignores=[]), "utils/tools.py", "exec"), scope)
    missing = SPEC_FUNCTIONS - set(scope)
    assert not missing, f"not in utils/tools.py any more: {missing}"
    build: Callable[[Callable[..., Any]], str] = scope["build_builtin_tool_spec_json"]
    return build


def main(source: Path, out: Path) -> None:
    sys.meta_path.insert(0, _Finder(source))
    env = importlib.import_module("open_webui.env")
    for name, value in ENV_DEFAULTS.items():
        setattr(env, name, value)
    builtin = importlib.import_module("open_webui.tools.builtin")
    build = spec_builder(source)
    tools = []
    for names in CATEGORIES.values():
        for name in names:
            spec = json.loads(build(getattr(builtin, name)))
            tools.append({"type": "function", "function": spec})
    text = json.dumps(
        {"open_webui": VERSION, "categories": CATEGORIES, "tools": tools}, indent=1, ensure_ascii=False
    )
    assert "MagicMock" not in text, "a stubbed value reached a schema"
    out.write_text(text + "\n")
    print(f"{len(tools)} tools -> {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))

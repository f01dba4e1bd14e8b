"""The package's shape, read from the source (STYLE.md, "A layout you can read from the names").

Every `runner/**.py` is parsed, never imported: each `import` and `from ... import`
counts, at module level or inside a function, and so does `importlib.import_module`
of a literal name. The rules:

- the layers go one way: core (the top-level modules) < flows < steps < runs <
  releases < daemon < cli; a module imports from its own layer or lower ones
  (`runner/__main__.py` may import the CLI);
- steps never import runs, the daemon or the CLI;
- runs know no HTTP, no git and no CLI;
- the HTTP app (`runner/daemon/http.py`) takes from runner only errors, jsonvalue
  and the daemon's own modules;
- no module over 400 lines, no class over 250 (physical lines).

Each failure names the module, the line and the import, or the size.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from support import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "runner"
LAYERS = ("core", "flows", "steps", "runs", "releases", "daemon", "cli")
MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 250


@dataclass(frozen=True)
class Import:
    module: str   # the importing module, "runner.steps.ssh.session"
    path: str     # its file, relative to the project: "runner/steps/ssh/session.py"
    line: int
    target: str   # the module imported: "runner.runs.store", "httpx", "git.exc"

    def __str__(self) -> str:
        return f"{self.path}:{self.line} imports {self.target}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PROJECT_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_package_dir(name: str) -> bool:
    """Whether the runner module `name` is a package (a folder with __init__.py)."""
    return (PACKAGE.joinpath(*name.split(".")[1:]) / "__init__.py").is_file()


def targets(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """The modules one import statement (or import_module call) brings in."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            anchor = module.split(".") if is_package else module.split(".")[:-1]
            anchor = anchor[:len(anchor) - (node.level - 1)]
            base = ".".join([*anchor, *([base] if base else [])])
        if within(base, "runner") and is_package_dir(base):
            # `from runner import secrets` imports runner.secrets; `from runner import __version__`
            # takes a name of runner/__init__.py, shown as runner.__version__
            return [f"{base}.{alias.name}" for alias in node.names]
        return [base]
    if (isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name))
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) == "import_module"
            and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
        return [node.args[0].value]
    return []


@cache
def sources() -> tuple[tuple[Path, str, ast.Module], ...]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        found.append((path, text, ast.parse(text, filename=str(path))))
    return tuple(found)


@cache
def imports() -> tuple[Import, ...]:
    found = []
    for path, _, tree in sources():
        module = module_name(path)
        relative = str(path.relative_to(PROJECT_ROOT))
        for node in ast.walk(tree):
            for target in targets(node, module, path.name == "__init__.py"):
                found.append(Import(module, relative, node.lineno, target))
    return tuple(sorted(found, key=lambda item: (item.path, item.line, item.target)))


def layer(module: str) -> str:
    """The layer of a runner module: its subpackage, or core for the top-level modules."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "core"


def within(name: str, *prefixes: str) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def report(offences: list, what: str) -> str:
    return f"{len(offences)} {what}:\n" + "\n".join(f"  {offence}" for offence in offences)


def test_every_module_is_read() -> None:
    names = {module_name(path) for path, _, _ in sources()}
    assert {"runner", "runner.__main__", "runner.errors", "runner.daemon.http", "runner.cli"} <= names
    assert len(imports()) > 100, "the import walk found almost nothing: is it reading runner/?"
    assert any(item.module == "runner.daemon.http" and within(item.target, "starlette") for item in imports()), \
        "the walk does not see that the HTTP app imports starlette"


def test_the_layers_go_one_way() -> None:
    offences = []
    for item in imports():
        if not within(item.target, "runner") or item.module == "runner.__main__":
            continue
        mine, theirs = layer(item.module), layer(item.target)
        if LAYERS.index(theirs) > LAYERS.index(mine):
            offences.append(f"{item} ({mine} may not import {theirs}: the layers go {' < '.join(LAYERS)})")
    assert not offences, report(offences, "imports against the layers")


def test_main_imports_only_the_cli_and_the_core() -> None:
    offences = [str(item) for item in imports() if item.module == "runner.__main__" and within(item.target, "runner")
                and layer(item.target) not in ("core", "cli")]
    assert not offences, report(offences, "imports of runner/__main__.py beyond the CLI")


def test_steps_never_import_runs_the_daemon_or_the_cli() -> None:
    offences = [str(item) for item in imports() if within(item.module, "runner.steps")
                and within(item.target, "runner.runs", "runner.daemon", "runner.cli")]
    assert not offences, report(offences, "imports of runs, the daemon or the CLI by steps")


RUNS_MUST_NOT_KNOW = ("starlette", "uvicorn", "httpx", "git", "click", "runner.releases", "runner.daemon",
                      "runner.cli")


def test_runs_know_no_http_git_or_cli() -> None:
    offences = [str(item) for item in imports() if within(item.module, "runner.runs")
                and within(item.target, *RUNS_MUST_NOT_KNOW)]
    assert not offences, report(offences, f"imports by runs of one of {', '.join(RUNS_MUST_NOT_KNOW)}")


HTTP_APP = "runner.daemon.http"


def test_the_http_app_takes_only_errors_jsonvalue_and_the_daemon() -> None:
    mine = [item for item in imports() if item.module == HTTP_APP]
    assert mine, f"{HTTP_APP} not found"
    offences = [str(item) for item in mine if within(item.target, "runner")
                and not within(item.target, "runner.errors", "runner.jsonvalue", "runner.daemon")]
    assert not offences, report(offences, f"imports by {HTTP_APP} beyond errors, jsonvalue and runner.daemon")


def test_no_module_over_400_lines() -> None:
    offences = sorted(((len(text.splitlines()), str(path.relative_to(PROJECT_ROOT))) for path, text, _ in sources()
                       if len(text.splitlines()) > MAX_MODULE_LINES), reverse=True)
    assert not offences, report([f"{name}: {size} lines" for size, name in offences],
                                f"modules over {MAX_MODULE_LINES} lines")


def test_no_class_over_250_lines() -> None:
    offences = []
    for path, _, tree in sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                first = min([node.lineno, *(decorator.lineno for decorator in node.decorator_list)])
                size = node.end_lineno - first + 1
                if size > MAX_CLASS_LINES:
                    offences.append((size, f"{path.relative_to(PROJECT_ROOT)}:{node.lineno} class {node.name}"))
    offences.sort(reverse=True)
    assert not offences, report([f"{name}: {size} lines" for size, name in offences],
                                f"classes over {MAX_CLASS_LINES} lines")

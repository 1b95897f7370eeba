"""The package's shape: no import cycles among runtime's modules, and the single-process CLIs load nothing
of torch.distributed's group machinery (it is loaded only when torchrun asks for it)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _project_imports(path: Path, known: set[str]) -> set[str]:
    """The project modules `path` imports at module level or inside functions (both count for a cycle)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in known}
    return found


def test_no_import_cycles_in_runtime():
    files = {_module_name(path): path for path in (ROOT / "runtime").rglob("*.py")}
    graph = {name: _project_imports(path, set(files)) - {name} for name, path in files.items()}
    # a package's __init__ importing its own submodules is not a cycle of meaning; drop parent -> child edges
    graph = {name: {dep for dep in deps if not dep.startswith(name + ".")} for name, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                pytest.fail("import cycle: " + " -> ".join(trail[trail.index(dep) :] + [dep]))
            if dep not in state:
                visit(dep, trail + [dep])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


@pytest.mark.parametrize("entry", ["runtime.run", "runtime.batch", "runtime"])
def test_single_process_entry_points_load_no_distributed_code(entry):
    code = (
        f"import sys, {entry}\n"
        "bad = sorted(m for m in sys.modules if m.startswith('runtime.distributed.') or m == 'torch.distributed.run')\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_old_module_names_are_gone():
    """Nothing was released under the names before the folders: no alias keeps them (nor an import hook)."""
    code = "import sys, runtime\nimport runtime.plan\n"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode != 0 and "No module named 'runtime.plan'" in out.stderr
    code = "import sys, runtime\nprint(sum(type(f).__module__.startswith('runtime') for f in sys.meta_path))\n"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"

"""An instance's state changes only through the transition table (``core/state.py``).

``LlamaProcess._set_state`` checks every change against the table; the supervisor's state callback
mirrors the result onto the stored record. Any other assignment to a ``state`` attribute would
skip the table, so this walks the AST of every module and names the one that does.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
PACKAGES = ("llamaman", "pages")

# (module path, enclosing Class.function) allowed to assign ``.state``.
ALLOWED = {
    ("llamaman/instances/process.py", "LlamaProcess.__init__"),  # the starting state, no transition
    ("llamaman/instances/process.py", "LlamaProcess._set_state"),  # the transition function itself
    ("llamaman/instances/supervisor.py", "Supervisor._on_state"),  # the record follows the process
    # An RPC worker's server has states of its own, checked against their own table.
    ("llamaman/cluster/rpc_worker.py", "RpcServerProcess.__init__"),
    ("llamaman/cluster/rpc_worker.py", "RpcServerProcess._set_state"),
}
# Download files have states of their own (pending, downloading, placed), not an instance's.
OTHER_STATES = ("llamaman/downloads/",)


def _state_targets(node: ast.AST) -> list[ast.AST]:
    targets: list[ast.AST] = []
    if isinstance(node, ast.Assign):
        targets = list(node.targets)
    elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
        targets = [node.target]
    out: list[ast.AST] = []
    while targets:
        t = targets.pop()
        if isinstance(t, (ast.Tuple, ast.List)):
            targets.extend(t.elts)
        elif isinstance(t, ast.Attribute) and t.attr == "state":
            out.append(t)
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "setattr"
        and len(node.args) >= 2
        and isinstance(node.args[1], ast.Constant)
        and node.args[1].value == "state"
    ):
        out.append(node)
    return out


def _assignments(tree: ast.AST, scope: str = "") -> list[tuple[str, int]]:
    found: list[tuple[str, int]] = []
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            found += _assignments(child, f"{scope}.{child.name}" if scope else child.name)
            continue
        found += [(scope, t.lineno) for t in _state_targets(child)]  # type: ignore[attr-defined]
        found += _assignments(child, scope)
    return found


def test_no_module_assigns_a_state_outside_the_transition_function() -> None:
    offenders = []
    for top in PACKAGES:
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel.startswith(OTHER_STATES):
                continue
            for scope, line in _assignments(ast.parse(path.read_text(), rel)):
                if (rel, scope) not in ALLOWED:
                    offenders.append(f"{rel}:{line} ({scope or 'module'})")
    assert not offenders, "state assigned outside the transition table: " + ", ".join(offenders)


def test_the_check_finds_a_direct_assignment() -> None:
    source = "class P:\n    def f(self):\n        self.state, x = 1, 2\n        setattr(self, 'state', 3)\n"
    tree = ast.parse(source)
    assert _assignments(tree) == [("P.f", 3), ("P.f", 4)]

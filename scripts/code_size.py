"""How big calibkit's modules and functions are: ``python scripts/code_size.py [--top 20] [--limit 60]``.

Prints every module's line count (largest first, those over 400 marked) and the longest functions and
methods (lines from ``def`` to the end of the body, decorators and docstring included), read with ``ast``.
Exits 1 when a module passes 400 lines or a function passes ``--limit``, so it can gate a change.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE_LIMIT = 400


def functions(path: Path) -> list[tuple[int, str]]:
    """``(lines, qualified name)`` of every function and method in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                found.append((child.end_lineno - start + 1, f"{prefix}{child.name}"))
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")

    visit(tree, "")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--limit", type=int, default=60, help="longest function allowed (lines)")
    parser.add_argument("package", nargs="?", type=Path, default=ROOT / "calibkit")
    args = parser.parse_args()
    modules = sorted(args.package.rglob("*.py"))
    sizes = sorted(((len(p.read_text(encoding="utf-8").splitlines()), p) for p in modules), reverse=True)
    print(f"{'lines':>6}  module")
    for lines, path in sizes:
        print(f"{lines:6d}  {path.relative_to(ROOT)}{'  > ' + str(MODULE_LIMIT) if lines > MODULE_LIMIT else ''}")
    longest = sorted(((n, f"{p.relative_to(ROOT)}:{name}") for p in modules for n, name in functions(p)), reverse=True)
    print(f"\n{'lines':>6}  longest functions")
    for lines, name in longest[: args.top]:
        print(f"{lines:6d}  {name}{'  > ' + str(args.limit) if lines > args.limit else ''}")
    over = [s for s in sizes if s[0] > MODULE_LIMIT] + [f for f in longest if f[0] > args.limit]
    print(f"\n{len(modules)} modules, {len(longest)} functions; {len(over)} over the limits")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())

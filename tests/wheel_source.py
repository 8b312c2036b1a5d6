"""The source of the official vLLM wheel that the GPU profile pins (pyproject.toml's `gpu` extra), for contract tests
on machines without a GPU: fetched once with `pip download --no-deps` into the git-ignored `.cache/vllm-<version>/`,
unpacked (its .py files and METADATA only) and read with `ast`. Nothing of it is ever imported."""
from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def pinned(package: str, extra: str = "gpu") -> str:
    """The `==` version of `package` in pyproject.toml's optional dependency `extra`."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"][extra]
    for dep in deps:
        m = re.fullmatch(rf"{re.escape(package)}==([\w.+-]+)", dep.replace(" ", ""))
        if m:
            return m.group(1)
    raise LookupError(f"pyproject.toml: no `{package}==<version>` in the {extra!r} extra: {deps}")


def fetch(version: str) -> Path:
    """The unpacked source tree of vllm==`version` (downloaded on first use; later calls read the cache)."""
    root = REPO / ".cache" / f"vllm-{version}"
    src = root / "src"
    if (src / "vllm" / "__init__.py").is_file():
        return src
    wheels = root / "wheel"
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                           "-d", str(wheels), f"vllm=={version}"], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"pip download vllm=={version} failed (these tests need PyPI):\n{proc.stderr[-2000:]}")
    (wheel,) = wheels.glob(f"vllm-{version}-*.whl")
    part = root / "src.partial"
    shutil.rmtree(part, ignore_errors=True)
    with zipfile.ZipFile(wheel) as z:
        z.extractall(part, [n for n in z.namelist() if n.endswith(".py") or n.endswith(".dist-info/METADATA")])
    part.rename(src)
    shutil.rmtree(wheels)  # 300+ MB; the unpacked .py files are all the tests read
    return src


class Source:
    """Classes, fields, signatures and literals of one package tree, by dotted name, from its source text."""

    def __init__(self, root: Path, label: str):
        self.root, self.label = root, label
        self._modules: dict[str, ast.Module] = {}

    def fail(self, api: str, detail: str) -> None:
        import pytest

        pytest.fail(f"{self.label}: {api}: {detail}", pytrace=False)

    def module(self, dotted: str) -> ast.Module:
        if dotted not in self._modules:
            path = self.root.joinpath(*dotted.split("."))
            path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
            if not path.is_file():
                self.fail(dotted, f"module not found ({path.relative_to(self.root)})")
            self._modules[dotted] = ast.parse(path.read_text(), str(path))
        return self._modules[dotted]

    def _resolve(self, module: str, name: str) -> tuple[str, str] | None:
        """Where `name`, used in `module`, is defined: (module, name), following `from X import name` inside the
        tree; None when it comes from elsewhere (the standard library, torch, msgspec ...)."""
        for node in self.module(module).body:
            if isinstance(node, (ast.ClassDef, ast.Assign, ast.AnnAssign)) and name in _targets(node):
                return module, name
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    if (alias.asname or alias.name) == name and node.module.split(".")[0] == self.root_package:
                        return node.module, alias.name
        return None

    @property
    def root_package(self) -> str:
        return next(p.name for p in self.root.iterdir() if (p / "__init__.py").is_file())

    def cls(self, dotted: str) -> tuple[str, ast.ClassDef]:
        module, name = dotted.rsplit(".", 1)
        found = self._resolve(module, name)
        while found and found[0] != module:  # re-exported: follow it
            module, name = found
            found = self._resolve(module, name)
        for node in self.module(module).body:
            if isinstance(node, ast.ClassDef) and node.name == name:
                return module, node
        self.fail(dotted, "class not found")

    def fields(self, dotted: str) -> set[str]:
        """Names annotated in the class body (dataclass / msgspec / TypedDict fields)."""
        _, node = self.cls(dotted)
        return {s.target.id for s in node.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)}

    def method(self, dotted: str, name: str) -> ast.FunctionDef | None:
        _, node = self.cls(dotted)
        return next((s for s in node.body if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))
                     and s.name == name), None)

    def members(self, dotted: str) -> set[str]:
        """Every attribute name an instance can have from this class and its bases inside the tree: methods, class
        attributes, and `self.X` assigned in any method."""
        module, node = self.cls(dotted)
        names = class_names(node)
        for base in node.bases:
            if isinstance(base, ast.Name):
                where = self._resolve(module, base.id)
                if where:
                    names |= self.members(".".join(where))
        return names

    def literal(self, dotted: str) -> set[str]:
        """The values of `Alias = Literal["a", "b", ...]`."""
        module, name = dotted.rsplit(".", 1)
        for node in self.module(module).body:
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and name in _targets(node):
                value = node.value
                if isinstance(value, ast.Subscript) and ast.unparse(value.value).endswith("Literal"):
                    elts = value.slice.elts if isinstance(value.slice, ast.Tuple) else [value.slice]
                    return {e.value for e in elts if isinstance(e, ast.Constant)}
        self.fail(dotted, "no `Literal[...]` alias of that name")


def _targets(node: ast.stmt) -> set[str]:
    if isinstance(node, ast.ClassDef):
        return {node.name}
    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
    return {t.id for t in targets if isinstance(t, ast.Name)}


def class_names(node: ast.ClassDef) -> set[str]:
    """Methods, class attributes and `self.X` assignments of one class body (bases not included)."""
    names = set()
    for s in node.body:
        if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(s.name)
        elif isinstance(s, (ast.Assign, ast.AnnAssign)):
            names |= _targets(s)
    for sub in ast.walk(node):
        targets = sub.targets if isinstance(sub, ast.Assign) else [sub.target] if isinstance(
            sub, (ast.AnnAssign, ast.AugAssign)) else []
        for t in targets:
            for el in t.elts if isinstance(t, ast.Tuple) else [t]:
                if isinstance(el, ast.Attribute) and isinstance(el.value, ast.Name) and el.value.id == "self":
                    names.add(el.attr)
    return names


def params(fn: ast.FunctionDef) -> list[str]:
    a = fn.args
    return [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs]


def calls(tree: ast.AST, attr: str) -> list[ast.Call]:
    """Every call `<anything>.attr(...)` or `attr(...)` in `tree`."""
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and (
        (isinstance(n.func, ast.Attribute) and n.func.attr == attr) or (isinstance(n.func, ast.Name)
                                                                         and n.func.id == attr))]

"""Static checks of the library code for what breaks first on a GPU (the suite runs them on the CPU).

Rules, checked on the syntax tree of every module under ``src/nonrobust``:

1. no ``.cuda()``: devices come from the model or the arguments;
2. every tensor factory (``torch.zeros``, ``arange``, ``randint``, …) names its ``device=`` (a tensor that
   meets an input must be on the input's device; CPU-by-design ones say ``device="cpu"``), except inside
   ``__init__`` of modules, whose buffers follow the default device as parameters do (``with torch.device(...)``);
3. ``torch.Generator`` is made only by ``runtime.make_generator``, and every call of that names the device
   it draws for;
4. every ``.numpy()`` reads from a ``.cpu()`` in the same expression (a CUDA tensor has no numpy view).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "nonrobust"
FACTORIES = {"zeros", "ones", "empty", "full", "rand", "randn", "randint", "randperm", "arange", "linspace", "logspace", "tensor",
             "as_tensor", "eye", "normal", "bernoulli", "multinomial"}


def _modules() -> list[tuple[Path, ast.AST]]:
    return [(p, ast.parse(p.read_text(encoding="utf-8"))) for p in sorted(SRC.rglob("*.py"))]


def _calls(tree: ast.AST):
    """``(call, enclosing function name)`` for every call in ``tree``."""
    def walk(node, func):
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else func
            if isinstance(child, ast.Call):
                yield child, func
            yield from walk(child, name)
    yield from walk(tree, "<module>")


def _where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(SRC.parent)}:{node.lineno}"


def _chain_has_cpu(node: ast.AST) -> bool:
    """Whether the expression ``node`` (a method chain) calls ``.cpu()`` or makes its tensor with ``device="cpu"``."""
    while True:
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Attribute) and node.func.attr == "cpu":
                return True
            if any(k.arg == "device" and isinstance(k.value, ast.Constant) and k.value.value == "cpu" for k in node.keywords):
                return True
            node = node.func
        elif isinstance(node, (ast.Attribute, ast.Subscript)):
            node = node.value
        else:
            return False


def test_there_is_code_to_check():
    assert len(_modules()) > 20


def test_no_cuda_calls():
    bad = [_where(p, c) for p, tree in _modules() for c, _ in _calls(tree) if isinstance(c.func, ast.Attribute) and c.func.attr == "cuda"]
    assert bad == []


def test_every_tensor_factory_names_its_device():
    bad = []
    for p, tree in _modules():
        for c, func in _calls(tree):
            f = c.func
            if (isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "torch" and f.attr in FACTORIES
                    and func != "__init__" and not any(k.arg == "device" for k in c.keywords)):
                bad.append(f"{_where(p, c)} torch.{f.attr} in {func}")
    assert bad == []


def test_generators_are_made_in_one_place_on_a_named_device():
    bad = []
    for p, tree in _modules():
        for c, func in _calls(tree):
            f = c.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if name == "Generator" and func != "make_generator":
                bad.append(f"{_where(p, c)} torch.Generator outside runtime.make_generator")
            if name == "make_generator" and len(c.args) < 2 and not any(k.arg == "device" for k in c.keywords):
                bad.append(f"{_where(p, c)} make_generator without a device in {func}")
    assert bad == []


def test_numpy_only_from_the_cpu():
    bad = [_where(p, c) for p, tree in _modules() for c, _ in _calls(tree)
           if isinstance(c.func, ast.Attribute) and c.func.attr == "numpy" and not _chain_has_cpu(c.func.value)]
    assert bad == []


@pytest.mark.parametrize("source, rule", [
    ("x.cuda()", test_no_cuda_calls),
    ("def f(x):\n    return torch.zeros(3)\n", test_every_tensor_factory_names_its_device),
    ("g = torch.Generator()\n", test_generators_are_made_in_one_place_on_a_named_device),
    ("y = x.double().numpy()\n", test_numpy_only_from_the_cpu),
])
def test_each_rule_catches_what_it_forbids(tmp_path, monkeypatch, source, rule):
    """The checks can fail: each finds its own violation in a module written for the purpose."""
    (tmp_path / "nonrobust").mkdir()
    (tmp_path / "nonrobust" / "bad.py").write_text(source)
    monkeypatch.setattr(__import__(__name__), "SRC", tmp_path / "nonrobust")
    with pytest.raises(AssertionError):
        rule()

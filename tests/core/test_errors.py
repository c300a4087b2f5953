"""Domain errors carry no HTTP status; each surface maps every kind in one table."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import llamaman
from llamaman.core import errors
from llamaman.gateway.dialects import MODEL_STATUS, REST_STATUS, model_status, rest_status

ROOT = Path(llamaman.__file__).parent
CORE_PACKAGES = ("core", "instances", "scheduling", "library", "downloads", "auth", "upstream", "telemetry")
SURFACES = {"rest": REST_STATUS, "model endpoints": MODEL_STATUS}


def _all_domain_errors() -> set[type[errors.LlamaManError]]:
    for info in pkgutil.walk_packages([str(ROOT)], "llamaman."):
        if ".migrations" in info.name or info.name.startswith("llamaman.testing"):
            continue
        importlib.import_module(info.name)
    found: set[type[errors.LlamaManError]] = set()
    todo: list[type[errors.LlamaManError]] = [errors.LlamaManError]
    while todo:
        cls = todo.pop()
        found.add(cls)
        todo.extend(c for c in cls.__subclasses__() if c not in found)
    return found


@pytest.mark.parametrize("surface", SURFACES)
def test_every_kind_has_an_answer_on_every_surface(surface: str) -> None:
    table = SURFACES[surface]
    assert set(errors.KINDS) | {errors.LlamaManError} == set(table)


def test_every_domain_error_is_of_one_kind_that_every_surface_maps() -> None:
    kindless = []
    for cls in _all_domain_errors():
        kinds = [k for k in cls.__mro__ if k in errors.KINDS]
        # A family base (InstanceError, DownloadError, ...) is never raised itself.
        if not kinds and cls is not errors.LlamaManError and cls.__subclasses__() == []:
            kindless.append(cls.__qualname__)
        for table in SURFACES.values():
            assert (kinds[0] if kinds else errors.LlamaManError) in table
    assert kindless == []


def test_the_maps_keep_todays_answers() -> None:
    assert rest_status(errors.NotFound("x")) == 404 and model_status(errors.NotFound("x")) == 404
    assert rest_status(errors.Rejected("x")) == 422
    assert rest_status(errors.StorageFull("x")) == 507
    assert model_status(errors.Throttled("x", retry_after=3)) == 429
    assert errors.Conflict("x").status_code == 409


def _name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _core_modules() -> list[Path]:
    return sorted(
        p for pkg in CORE_PACKAGES for p in (ROOT / pkg).rglob("*.py") if "migrations" not in p.parts
    )


def test_core_packages_know_no_http_status() -> None:
    domain = {c.__name__ for c in _all_domain_errors()}
    problems = []
    for path in _core_modules():
        tree = ast.parse(path.read_text(), str(path))
        where = path.relative_to(ROOT.parent)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and any(a.name == "HTTPException" for a in node.names):
                problems.append(f"{where}:{node.lineno} imports HTTPException")
            elif isinstance(node, ast.Attribute | ast.Name) and _name(node) == "HTTPException":
                problems.append(f"{where}:{node.lineno} uses HTTPException")
            elif isinstance(node, ast.Call):
                callee = _name(node.func)
                if not (callee in domain or callee.endswith(("Error", "Exception"))):
                    continue
                args = [*node.args, *(k.value for k in node.keywords)]
                if any(
                    isinstance(a, ast.Constant) and type(a.value) is int and 100 <= a.value <= 599
                    for a in args
                ):
                    problems.append(f"{where}:{node.lineno} builds {callee} with an HTTP status")
    assert problems == []

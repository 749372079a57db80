"""Every public function and class of the library has a docstring that names the lesson (equation) it implements."""

import importlib
import inspect
import pkgutil

import pytest

import diffmath

MODULES = [
    importlib.import_module(f"diffmath.{m.name}")
    for m in pkgutil.iter_modules(diffmath.__path__)
    if not m.name.startswith("_") and m.name not in ("cli", "notebooks", "__main__")
]
PUBLIC = sorted(
    {
        (mod.__name__, name): obj
        for mod in MODULES
        for name, obj in vars(mod).items()
        if not name.startswith("_")
        and (inspect.isfunction(obj) or inspect.isclass(obj))
        and getattr(obj, "__module__", None) == mod.__name__
    }.items()
)
EXEMPT = {("diffmath.models", "Model")}  # the protocol is documented in its module (lesson 0, sec. 0.5)


@pytest.mark.parametrize(("key", "obj"), PUBLIC, ids=[f"{m}.{n}" for (m, n), _ in PUBLIC])
def test_public_api_is_documented_with_its_lesson(key, obj):
    doc = inspect.getdoc(obj) or ""
    assert doc, f"{key} has no docstring"
    if key in EXEMPT:
        return
    module_doc = inspect.getdoc(importlib.import_module(key[0])) or ""
    assert "lesson" in doc.lower() or ("lesson" in module_doc.lower() and inspect.isclass(obj)), (
        f"{key[0]}.{key[1]}: the docstring must name the lesson equation it implements"
    )
    if "\\" in (obj.__doc__ or ""):
        assert "\b" not in obj.__doc__ and "\x0c" not in obj.__doc__, "TeX docstrings must be raw strings"

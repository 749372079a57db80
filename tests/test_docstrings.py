"""Every public function and class of the library has a docstring that names the lesson (equation) it implements."""

import ast
import importlib
import inspect
import pkgutil
import re
import textwrap

import pytest

import diffmath

MODULES = [  # every module of every layer (subpackages included); private modules and the command line are skipped
    importlib.import_module(m.name)
    for m in pkgutil.walk_packages(diffmath.__path__, prefix="diffmath.")
    if not m.ispkg
    and not m.name.rsplit(".", 1)[-1].startswith("_")
    and m.name not in ("diffmath.cli", "diffmath.notebooks")
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
EXEMPT = {("diffmath.core.models", "Model")}  # the protocol is documented in its module (lesson 0, sec. 0.5)


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


# ---------------------------------------------------------------------------------------------------------------------
# Issue 6, item 6: one docstring style (numpy) for the public API, with Parameters, Returns/Yields and Raises sections.

TOYS = importlib.import_module("toydata.toys")
IMAGES = importlib.import_module("toydata.images")
FUSION = importlib.import_module("toydata.fusion")
NUMPY_MODULES = [*MODULES, TOYS, IMAGES, FUSION]
SECTION = re.compile(r"^([A-Z][A-Za-z ]*)\n-{3,}[ \t]*$", re.MULTILINE)
# Exemptions, kept tiny: the Model protocol is documented in its module (lesson 0, sec. 0.5); its `(*args, **kwargs)`
# signature is typing.Protocol's, not a constructor anyone calls.
NUMPY_EXEMPT = {"diffmath.core.models.Model"}


def _public_callables():
    seen = {}
    for mod in NUMPY_MODULES:
        for name, obj in vars(mod).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
                continue
            if inspect.isfunction(obj):
                seen[f"{mod.__name__}.{name}"] = obj
            elif inspect.isclass(obj):
                seen[f"{mod.__name__}.{name}"] = obj
                for attr, member in vars(obj).items():
                    if isinstance(member, (staticmethod, classmethod)):
                        member = member.__func__
                    if not attr.startswith("_") and inspect.isfunction(member):
                        seen[f"{mod.__name__}.{name}.{attr}"] = member
    return sorted(seen.items())


CALLABLES = [(key, obj) for key, obj in _public_callables() if key not in NUMPY_EXEMPT]


def _sections(doc: str) -> dict[str, str]:
    """Split a numpy docstring into ``{header: body}`` by its underlined section headers."""
    heads = list(SECTION.finditer(doc))
    return {
        m.group(1).strip(): doc[m.end() : heads[i + 1].start() if i + 1 < len(heads) else len(doc)]
        for i, m in enumerate(heads)
    }


def _documented_names(body: str) -> set[str]:
    """Names in a Parameters section: its unindented ``name : type`` / ``a, b : type`` lines."""
    names = set()
    for line in body.splitlines():
        if line.strip() and not line[0].isspace():
            names.update(n.strip().lstrip("*") for n in line.split(" : ")[0].split(","))
    return names


def _raises_directly(fn) -> bool:
    """True if the function's own source holds a ``raise`` statement (cheap heuristic: the checks it calls are not
    followed, but their errors are documented by hand)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError):
        return False
    return any(isinstance(node, ast.Raise) for node in ast.walk(tree))


def _check_parameters(key, params, sections, section="Parameters"):
    if not params:
        return
    assert section in sections, f"{key}: no '{section}' section for {[p.name for p in params]}"
    missing = {p.name for p in params} - _documented_names(sections[section])
    assert not missing, f"{key}: parameters {sorted(missing)} are not listed in its '{section}' section"


@pytest.mark.parametrize(("key", "obj"), CALLABLES, ids=[key for key, _ in CALLABLES])
def test_public_docstrings_are_numpy_style(key, obj):
    doc = inspect.getdoc(obj) or ""
    assert doc, f"{key} has no docstring"
    sections = _sections(doc)
    if inspect.isclass(obj):
        params = [p for p in inspect.signature(obj).parameters.values() if p.name not in ("self", "cls")]
        # NamedTuple fields are documented as Attributes: griffe (the API pages) cannot see a NamedTuple's constructor
        _check_parameters(key, params, sections, "Attributes" if hasattr(obj, "_fields") else "Parameters")
        init = vars(obj).get("__init__")
        if init is not None and _raises_directly(init):
            assert "Raises" in sections, f"{key}: __init__ raises, so the class docstring needs a 'Raises' section"
        return
    sig = inspect.signature(obj)
    params = [p for p in sig.parameters.values() if p.name not in ("self", "cls")]
    _check_parameters(key, params, sections)
    if inspect.isgeneratorfunction(obj):
        assert "Yields" in sections, f"{key}: a generator needs a 'Yields' section"
    elif sig.return_annotation not in (None, "None"):
        assert "Returns" in sections, f"{key}: no 'Returns' section"
    if _raises_directly(obj):
        assert "Raises" in sections, f"{key}: its body raises, so it needs a 'Raises' section"
    unknown = set(sections) - {
        "Parameters",
        "Returns",
        "Yields",
        "Raises",
        "Notes",
        "Examples",
        "See Also",
        "Warns",
        "References",
        "Attributes",
        "Other Parameters",
    }
    assert not unknown, f"{key}: unknown numpy section(s) {sorted(unknown)}"

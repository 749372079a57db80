r"""Every cross-reference to a lesson resolves: "eq. N.M" to a ``\tag{N.M}`` of lesson N, "sec. N.M" to a heading
"N.M" of lesson N and "Algorithm N.M" to lesson N's algorithm, wherever the library, the tests, the benchmarks, the
lessons, the notebooks and the README cite one (references to a source's own numbering are written in parentheses,
"(5.21)", or as "Su's 5.21", and are not matched)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LESSONS = {p.name[:2]: p.read_text(encoding="utf-8") for p in (ROOT / "lessons").glob("[0-9][0-9]-*.md")}
TARGETS = {
    "eq": {n: set(re.findall(r"\\tag\{(\d+\.\d+[a-z]?)\}", t)) for n, t in LESSONS.items()},
    "sec": {n: set(re.findall(r"^#+ (\d+\.\d+)\b", t, re.M)) for n, t in LESSONS.items()},
    "Algorithm": {  # a bold "**Algorithm 22.1 (...) and 22.2 (...).**" defines every number in it
        n: {r for b in re.findall(r"\*\*Algorithm ([^*]*)\*\*", t) for r in re.findall(r"\d+\.\d+", b)}
        for n, t in LESSONS.items()
    },
}
REF = re.compile(r"\b(eqs?|secs?|Algorithm)\.? (\d+\.\d+[a-z]?(?:\s*(?:-|,|and|to)\s*\d+\.\d+[a-z]?)*)")
FILES = [
    *ROOT.glob("diffmath/**/*.py"),
    *ROOT.glob("toydata/*.py"),
    *(p for p in ROOT.glob("tests/*.py") if p.name != Path(__file__).name),
    *ROOT.glob("benchmarks/**/*.py"),
    *ROOT.glob("lessons/*.md"),
    *ROOT.glob("notebooks/*.ipynb"),
    ROOT / "README.md",
]


def unresolved():
    for path in FILES:
        text = path.read_text(encoding="utf-8")
        for m in REF.finditer(text):
            kind = "eq" if m.group(1).startswith("eq") else "sec" if m.group(1).startswith("sec") else "Algorithm"
            for ref in re.findall(r"\d+\.\d+[a-z]?", m.group(2)):
                lesson = ref.split(".")[0].zfill(2)
                if ref not in TARGETS[kind].get(lesson, set()):
                    line = text.count("\n", 0, m.start()) + 1
                    yield f"{path.relative_to(ROOT)}:{line}: {m.group(0)!r} ({kind} {ref} is not in lesson {lesson})"


def test_every_lesson_reference_resolves():
    bad = list(unresolved())
    assert not bad, "\n".join(bad)


def test_the_checker_sees_references():
    # a sanity check on the checker itself: the corpus cites hundreds of equations, and a made-up one is caught
    assert sum(len(v) for v in TARGETS["eq"].values()) > 200
    assert REF.search("see lesson 23, eq. 23.99").group(2) == "23.99"
    assert "23.99" not in TARGETS["eq"]["23"] and "23.5" in TARGETS["eq"]["23"]

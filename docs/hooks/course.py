"""mkdocs hook: the course part of the navigation, built from the lesson and notebook folders.

``docs/lessons`` and ``docs/notebooks`` are symlinks to the repository's ``lessons/`` and ``notebooks/`` (one copy of
each file). This hook finds ``NN-slug.md`` and ``NN-slug.ipynb`` there and puts each lesson next to its notebook, so a
new lesson or notebook appears on the site with no edit to ``mkdocs.yml``:

* the nav entry ``COURSE`` in ``mkdocs.yml`` is replaced by ``Notation`` (lesson and notebook 00) and ``Lessons``
  (01 and up, lesson then notebook);
* the line ``<!-- course-table -->`` in ``docs/index.md`` is replaced by a table of the lessons and notebooks.
"""

from __future__ import annotations

import re
from pathlib import Path

MARKER = "COURSE"
TABLE_MARKER = "<!-- course-table -->"
NUMBERED = re.compile(r"^(\d\d)-[\w-]+$")


def _short_title(md: Path) -> str:
    """The lesson's H1 without its number and without what follows a colon."""
    for line in md.read_text(encoding="utf-8").splitlines():
        if line.startswith("# "):
            title = line[2:].strip()
            title = re.sub(r"^\d+\s*[.·:-]?\s*", "", title)  # "0. Notation", "01 · DDIM"
            return title.split(":")[0].strip() or md.stem
    return md.stem


def course(docs_dir: str | Path) -> list[dict]:
    """One entry per lesson number: its number, short title and the lesson/notebook paths (relative to docs/)."""
    docs = Path(docs_dir)
    found: dict[str, dict] = {}
    for folder, suffix, key in (("lessons", ".md", "lesson"), ("notebooks", ".ipynb", "notebook")):
        for path in sorted((docs / folder).glob(f"*{suffix}")):
            m = NUMBERED.match(path.stem)
            if m:
                entry = found.setdefault(m.group(1), {"num": m.group(1), "title": path.stem[3:].replace("-", " ")})
                entry[key] = f"{folder}/{path.name}"
                if key == "lesson":
                    entry["title"] = _short_title(path)
    return [found[k] for k in sorted(found)]


def _pages(entry: dict) -> list[dict]:
    pages = []
    if "lesson" in entry:
        pages.append({f"{entry['num']} · {entry['title']}": entry["lesson"]})
    if "notebook" in entry:
        pages.append({f"{entry['num']} · Notebook": entry["notebook"]})
    return pages


def on_config(config, **kwargs):
    nav = config.get("nav")
    if not nav or MARKER not in nav:
        return config
    entries = course(config["docs_dir"])
    generated = []
    notation = [p for e in entries if e["num"] == "00" for p in _pages(e)]
    lessons = [p for e in entries if e["num"] != "00" for p in _pages(e)]
    if notation:
        generated.append({"Notation": notation})
    if lessons:
        generated.append({"Lessons": lessons})
    i = nav.index(MARKER)
    config["nav"] = nav[:i] + generated + nav[i + 1 :]
    return config


def on_page_markdown(markdown, page, config, files, **kwargs):
    if TABLE_MARKER not in markdown:
        return markdown
    rows = ["| | lesson | notebook |", "|---|---|---|"]
    for e in course(config["docs_dir"]):
        lesson = f"[{e['title']}]({e['lesson']})" if "lesson" in e else ""
        notebook = f"[notebook {e['num']}]({e['notebook']})" if "notebook" in e else ""
        rows.append(f"| {e['num']} | {lesson} | {notebook} |")
    return markdown.replace(TABLE_MARKER, "\n".join(rows))

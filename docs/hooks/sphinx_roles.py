"""mkdocs hook: Sphinx cross-reference roles in docstrings become links on the API pages.

The docstrings are numpy style, and some name other objects with Sphinx roles (``:func:`fit```,
``:class:`~diffmath.exact.mixtures.ExactModel```), which mkdocstrings leaves as text (":func:" followed by code). This hook
turns each into a mkdocs-autorefs reference: a full name links to its entry on any page, a bare name to the one entry
on the same page whose name ends with it, and a name it cannot find stays as code without the role (no warning).
"""

from __future__ import annotations

import re

ROLE = re.compile(r":(?:py:)?(?:func|meth|class|mod|attr|obj|data|exc):<code>(~?)([A-Za-z_][\w.]*)(\(\))?</code>")
DOTTED_ID = re.compile(r'id="([A-Za-z_]\w*(?:\.\w+)+)"')


def on_page_content(html, page, **kwargs):
    if ":<code>" not in html:
        return html
    ids = set(DOTTED_ID.findall(html))

    def reference(m: re.Match) -> str:
        tilde, target, call = m.groups()
        shown = (target.rsplit(".", 1)[-1] if tilde else target) + (call or "")
        found = [i for i in ids if i == target or i.endswith("." + target)]
        identifier = found[0] if len(found) == 1 else target
        return f'<autoref identifier="{identifier}" optional><code>{shown}</code></autoref>'

    return ROLE.sub(reference, html)

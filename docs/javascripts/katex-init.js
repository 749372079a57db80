// Typesets the mathematics of every page with the KaTeX copy in docs/assets/katex (no network).
// Lessons and docstrings reach the page as \(..\) / \[..\] (pymdownx.arithmatex, generic mode); notebook markdown
// cells reach it as raw $..$ / $$..$$ (mkdocs-jupyter does not run Markdown extensions), so all four are delimiters.
// Skipped: <pre>, <code>, <script>... (auto-render's default), mkdocs-jupyter's hidden copy of each code cell
// (.clipboard-copy-txt: a "$" in code must stay as typed) and math already typeset (.katex), so running twice
// (Material's document$ and DOMContentLoaded) is harmless.
(function () {
  "use strict";
  var options = {
    delimiters: [
      { left: "$$", right: "$$", display: true },
      { left: "\\[", right: "\\]", display: true },
      { left: "\\(", right: "\\)", display: false },
      { left: "$", right: "$", display: false },
    ],
    ignoredClasses: ["katex", "katex-display", "clipboard-copy-txt", "nokatex"],
    throwOnError: false,
  };
  function typeset() {
    if (typeof renderMathInElement === "function" && document.body) {
      renderMathInElement(document.body, options);
    }
  }
  if (typeof document$ !== "undefined" && document$.subscribe) {
    document$.subscribe(typeset); // Material: every page load, including instant navigation
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", typeset);
  } else {
    typeset();
  }
})();

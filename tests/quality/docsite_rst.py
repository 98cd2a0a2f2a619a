"""The docs site's guides (docs/docsite/rst/*.rst), generated from the user documentation in docs/*.md.

antsibull-docs takes a collection's extra documentation only as RST files in docs/docsite/rst/ that define a label
``ansible_collections.hyperv.backup.docsite.<name>``, listed in docs/docsite/extra-docs.yml; the Markdown files stay
the source (they read well on GitHub and in a checkout). Run this after editing one of them:

    python tests/quality/docsite_rst.py

tests/quality/test_docsite.py fails when a generated file is out of date. Links between the converted guides become
``:doc:`` references; links to anything else in the repository become links to the file on GitHub.
"""
import posixpath
import re
import sys
from pathlib import Path

import m2r2

ROOT = Path(__file__).resolve().parents[2]
RST_DIR = ROOT / "docs" / "docsite" / "rst"
REPOSITORY_URL = "https://github.com/hyperv-backup/hyperv.backup"
LABEL_PREFIX = "ansible_collections.hyperv.backup.docsite."

# The guides a user of the collection reads, in the order of extra-docs.yml. architecture.md, powershell.md,
# lab_wmi.md and reliability.md are for people working on the collection and stay in the repository.
GUIDES = ["workflow", "awx", "backup_restore", "method_choice", "repository", "security", "lab_host"]

_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _rewrite_link(target):
    """A Markdown link target in docs/<guide>.md, as the docs site needs it."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
        return target
    path, anchor = (target.split("#", 1) + [""])[:2]
    repo_path = posixpath.normpath(posixpath.join("docs", path))
    name = posixpath.splitext(posixpath.basename(repo_path))[0]
    if posixpath.dirname(repo_path) == "docs" and repo_path.endswith(".md") and name in GUIDES:
        return name + ".md"                       # -> :doc:`name` (the anchor is lost: the page is linked)
    kind = "tree" if path.endswith("/") or not posixpath.splitext(repo_path)[1] else "blob"
    return "%s/%s/main/%s%s" % (REPOSITORY_URL, kind, repo_path, "#" + anchor if anchor else "")


def _plain_pseudo_code(markdown):
    """```python fences that hold call sketches rather than Python become ```text (rstcheck parses python blocks)."""
    def fence(match):
        try:
            compile(match.group(2), "<docs>", "exec")
        except SyntaxError:
            return match.group(1) + "text\n" + match.group(2) + match.group(3)
        return match.group(0)
    return re.sub(r"^(```)python\n(.*?)(^```)", fence, markdown, flags=re.M | re.S)


def convert(name):
    """RST text of guide ``name`` (docs/<name>.md)."""
    markdown = (ROOT / "docs" / (name + ".md")).read_text(encoding="utf-8")
    markdown = _plain_pseudo_code(_LINK.sub(lambda m: "](%s)" % _rewrite_link(m.group(1)), markdown))
    body = m2r2.convert(markdown, parse_relative_links=True, anonymous_references=True)
    # a fence without a language: rstcheck (antsibull-docs lint) and Sphinx want one
    body = re.sub(r"^(\s*)\.\. code-block::[ \t]*$", r"\1.. code-block:: text", body, flags=re.M)
    # m2r2 leaves some inline code (after a quote, in a table cell) in single backticks, which RST reads as a
    # reference; a single-backtick span that is neither a role (:doc:`x`) nor a link (`x <url>`__) is code
    body = re.sub(r"(?<![`:\\])`(?!`)([^`\n]+?)`(?![`_])", r"``\1``", body)
    header = (".. Generated from docs/%s.md by tests/quality/docsite_rst.py: edit that file, then run the script.\n\n"
              ".. _%s%s:\n\n" % (name, LABEL_PREFIX, name))
    return header + body.lstrip("\n").rstrip() + "\n"


def expected_files():
    """{path: text} of every generated guide."""
    return {RST_DIR / (name + ".rst"): convert(name) for name in GUIDES}


def write():
    RST_DIR.mkdir(parents=True, exist_ok=True)
    for path, text in expected_files().items():
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            print("wrote %s" % path.relative_to(ROOT))


if __name__ == "__main__":
    write()
    sys.exit(0)

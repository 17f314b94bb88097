"""The page shell of the HTML files buildsys writes (a version's `report.html`, a model's `index.html`).

One place for the doctype, the head and the base style the pages share, so that they look like one tool's pages;
each page adds only its own rules. Self-contained on purpose: no scripts, no fonts or styles from the network, so
that a page opens from disk, from an artifact store or from a CI upload alike. Standard library only.
"""

from __future__ import annotations

import html

BASE_STYLE = """\
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; max-width: 1100px;
  padding: 24px; color: #1d2330; background: #ffffff; line-height: 1.45; }
h1 { margin: 0 0 4px; font-size: 26px; }
.sub { color: #5b6475; margin: 0 0 16px; }
table { border-collapse: collapse; font-size: 14px; margin: 8px 0; }
th, td { padding: 4px 12px; border-bottom: 1px solid #e6e9ef; text-align: right; }
code { font-size: 12px; }
"""


def html_page(title: str, body: str, style: str = "") -> str:
    """A whole page: ``title`` is escaped here; ``body`` and ``style`` (rules after the base ones) are markup."""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>
{BASE_STYLE}{style}</style>
</head>
<body>
{body}
</body>
</html>
"""

"""runner.daemon.web.markdown: untrusted Markdown in, HTML that is safe under the pages' CSP out."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from runner.daemon.web.markdown import render_markdown

SHA = "0123456789abcdef" * 4


def elements(html: str) -> list[tuple[str, dict[str, str | None]]]:
    """The (tag, attributes) of every element a browser would build from `html`."""
    found: list[tuple[str, dict[str, str | None]]] = []

    class Collect(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.append((tag, dict(attrs)))

    Collect().feed(html)
    return found


@pytest.mark.parametrize("text", [
    "<script>alert(1)</script>",
    "before <script src=https://evil.example/x.js></script> after",
    "```\n</code></pre><script>alert(1)</script>\n```",
    "<img src=x onerror=alert(1)>",
    '<a href="javascript:alert(1)" onclick="alert(2)">x</a>',
    "<iframe src=https://evil.example></iframe><style>body{display:none}</style>",
    "<!-- a comment --><svg onload=alert(1)></svg>",
])
def test_raw_html_never_becomes_markup(text):
    html = render_markdown(text)
    tags = {tag for tag, _ in elements(html)}
    assert tags <= {"p", "pre", "code"}, html
    assert not any(name.startswith("on") for _, attrs in elements(html) for name in attrs), html


@pytest.mark.parametrize("url", [
    "javascript:alert(1)", "JaVaScRiPt:alert(1)", "java\tscript:alert(1)", "vbscript:msgbox(1)",
    "data:text/html,<script>alert(1)</script>", "file:///etc/passwd", "ftp://files.example/x",
])
def test_only_http_mailto_and_relative_links_survive(url):
    html = render_markdown(f"[click]({url}) and <{url}>")
    assert "href" not in html, html


def test_safe_links_keep_their_target_and_get_rel_noopener():
    html = render_markdown("[a](https://example.com/x?y=1) [b](mailto:ops@example.com) [c](/ui/runs/r1) [d](../x)")
    for href in ("https://example.com/x?y=1", "mailto:ops@example.com", "/ui/runs/r1", "../x"):
        assert f'href="{href}" rel="noopener noreferrer"' in html, html


def test_resource_references_point_at_the_resource_page():
    html = render_markdown(f"[the plan](res://{SHA}) ![chart](res://{SHA})")
    assert f'<a href="/ui/resources/{SHA}" rel="noopener noreferrer">the plan</a>' in html
    assert f'<img src="/ui/resources/{SHA}" alt="chart">' in html
    assert f'href="/r/{SHA}"' in render_markdown(f"[p](res://{SHA})", resource_prefix="/r/")
    assert "href" not in render_markdown("[p](res://../../etc/passwd)")  # not a sha256: not a resource


def test_images_from_elsewhere_become_links_so_nothing_is_fetched_from_another_host():
    html = render_markdown("![pixel](https://tracker.example/p.png) ![x](//tracker.example/p.png)")
    assert "<img" not in html
    assert '<a href="https://tracker.example/p.png" rel="noopener noreferrer">pixel</a>' in html
    assert "<img" not in render_markdown("![x](data:image/png;base64,iVBORw0KGgo=)")


def test_tables_code_and_emphasis_stay_with_no_inline_style():
    html = render_markdown("| step | ms |\n|:--|--:|\n| plan | 12 |\n\n"
                           "```sh\nrm -rf <dir> && echo 'done'\n```\n\n"
                           "**bold** _em_ ~~gone~~ `x < y`\n\n1. one\n2. two\n\n> quoted")
    for tag in ("<table>", "<thead>", "<tbody>", '<th class="align-left">step</th>', '<td class="align-right">12</td>',
                "<pre><code>rm -rf &lt;dir&gt; &amp;&amp; echo 'done'", "<strong>bold</strong>", "<em>em</em>",
                "<s>gone</s>", "<code>x &lt; y</code>", "<ol>", "<blockquote>"):
        assert tag in html, (tag, html)
    assert "style=" not in html


def test_empty_and_deeply_nested_input_render_quietly():
    assert render_markdown("") == ""
    html = render_markdown(">" * 5000 + " deep")  # markdown-it stops nesting at 20 levels
    assert html.count("<blockquote>") <= 20 and len(html) < 2000

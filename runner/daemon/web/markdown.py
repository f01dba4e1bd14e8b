"""Markdown from flows and steps (an approval's context, an artifact) rendered as safe HTML.

The text is untrusted: it is written by whoever edits a flow, and filled in from
step outputs and inputs that anyone who can start a run controls. So it goes
through two independent gates:

1. markdown-it-py (CommonMark, plus tables and strikethrough) with raw HTML
   disabled: a `<script>` in the text comes out as the text `<script>`.
2. nh3 (ammonia) with an explicit allow-list of tags and attributes, and only
   http(s), mailto and relative URLs; every link gets rel="noopener noreferrer".

Between the two, the token stream is adjusted for the pages' strict CSP:
`res://<sha256>` references become links to the resource page, table alignment
becomes a class instead of an inline style (which the CSP would refuse), and an
image that is not served by signoff itself becomes a plain link, so a context
cannot make the reviewer's browser fetch a tracking pixel from elsewhere.
"""

from __future__ import annotations

import functools
import re
from urllib.parse import urlsplit

import nh3
from markdown_it import MarkdownIt
from markdown_it.token import Token

RESOURCE_PREFIX = "/ui/resources/"
URL_SCHEMES = frozenset({"http", "https", "mailto"})
ALIGN_CLASSES = frozenset({"align-left", "align-center", "align-right"})
TAGS = frozenset({
    "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "code", "em", "strong", "s",
    "ul", "ol", "li", "a", "img", "table", "thead", "tbody", "tr", "th", "td",
})
ATTRIBUTES = {"a": {"href", "title"}, "img": {"src", "alt", "title"}, "ol": {"start"}}
CLASSES = {"th": ALIGN_CLASSES, "td": ALIGN_CLASSES}

_RESOURCE = re.compile(r"res://([0-9a-f]{64})")
_ALIGN = re.compile(r"text-align:\s*(left|center|right)")


def render_markdown(text: str, *, resource_prefix: str = RESOURCE_PREFIX) -> str:
    """Safe HTML for the Markdown `text`; `res://<sha256>` links point at `resource_prefix + sha256`."""
    parser = _parser()
    env: dict = {}
    tokens = parser.parse(text or "", env)
    for token in tokens:
        _adjust(token, resource_prefix)
    html = parser.renderer.render(tokens, parser.options, env)
    return nh3.clean(html, tags=set(TAGS), attributes={tag: set(names) for tag, names in ATTRIBUTES.items()},
                     allowed_classes={tag: set(names) for tag, names in CLASSES.items()},
                     url_schemes=set(URL_SCHEMES), link_rel="noopener noreferrer",
                     clean_content_tags={"script", "style"}, strip_comments=True)


def resource_url(url: str, resource_prefix: str = RESOURCE_PREFIX) -> str:
    """`res://<sha256>` as the path of its resource page; any other URL as it is."""
    match = _RESOURCE.fullmatch(url)
    return f"{resource_prefix}{match.group(1)}" if match else url


@functools.cache
def _parser() -> MarkdownIt:
    # configuration only, built once: render_markdown keeps no state between calls
    return MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"])


def _adjust(token: Token, resource_prefix: str) -> None:
    if token.type in ("th_open", "td_open"):
        align = _ALIGN.search(str(token.attrs.pop("style", "")))
        if align:
            token.attrSet("class", f"align-{align.group(1)}")
    if token.children:
        token.children = [adjusted for child in token.children for adjusted in _inline(child, resource_prefix)]


def _inline(token: Token, resource_prefix: str) -> list[Token]:
    if token.type == "link_open":
        token.attrSet("href", resource_url(str(token.attrGet("href") or ""), resource_prefix))
    elif token.type == "image":
        source = resource_url(str(token.attrGet("src") or ""), resource_prefix)
        if not _served_here(source):
            return _as_link(token, source)
        token.attrSet("src", source)
    return [token]


def _served_here(url: str) -> bool:
    """A same-origin path: what the CSP's img-src 'self' allows and what leaks nothing to other hosts."""
    if "\\" in url or url.startswith("//"):
        return False  # browsers read "/\host" and "//host" as another host
    parts = urlsplit(url)
    return bool(url) and not parts.scheme and not parts.netloc


def _as_link(image: Token, source: str) -> list[Token]:
    alt = image.content or source
    return [Token("link_open", "a", 1, attrs={"href": source}),
            Token("text", "", 0, content=alt),
            Token("link_close", "a", -1)]

"""Artifacts (resources) in the browser: a page that shows them, and their raw bytes, served inertly.

What a resource is shown as is decided from its name, its recorded media type
and its first bytes, never from the media type alone (steps record most files
as application/octet-stream):

    image     png, jpeg, gif, webp whose bytes say so: inline, as that type
    markdown  rendered through markdown.py (sanitized)
    text      shown escaped; a unified diff in a diff view
    download  everything else, HTML and SVG included: never rendered, served as an attachment

The raw bytes always carry nosniff and, unless they are an inline-safe image or
plain text, `Content-Disposition: attachment`; HTML, SVG, XML and script are
served as text/plain, so not even a direct visit runs them.

A resource is shown to users who may see a run that holds it (the visibility
service), or through a signed artifact link (`/ui/artifacts/{token}`) for that
one resource without a session.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from runner.daemon.web import links, markdown
from runner.daemon.web.context import Pages
from runner.errors import NotFound

SHA256 = re.compile(r"^[0-9a-f]{64}$")
SHOWN_LIMIT = 512 * 1024  # text shown on the page; more is a download
IMAGES = {"image/png": b"\x89PNG\r\n\x1a\n", "image/jpeg": b"\xff\xd8\xff", "image/gif": b"GIF8"}
IMAGE_SUFFIXES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
                  ".webp": "image/webp"}
MARKDOWN_SUFFIXES = {".md", ".markdown"}
TEXT_SUFFIXES = {".txt", ".log", ".diff", ".patch", ".json", ".yaml", ".yml", ".conf", ".cfg", ".ini", ".csv",
                 ".toml", ".sh", ".py", ".sql", ".out", ".err", ""}
ACTIVE = re.compile(r"(html|svg|xml|javascript|ecmascript|x-sh)", re.IGNORECASE)


def image_type(head: bytes) -> str | None:
    """The image type the first bytes prove, among those safe to show inline."""
    for media, magic in IMAGES.items():
        if head.startswith(magic):
            return media
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def classify(name: str, media_type: str, head: bytes) -> str:
    """image, markdown, text or download (see the module's docstring)."""
    suffix = Path(name).suffix.lower()
    media = (media_type or "").split(";")[0].strip().lower()
    if (suffix in IMAGE_SUFFIXES or media in IMAGES or media == "image/webp") and image_type(head):
        return "image"
    if ACTIVE.search(media) or suffix in {".html", ".htm", ".svg", ".xhtml", ".xml", ".js"}:
        return "download"
    if b"\x00" in head:
        return "download"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a character cut at the end of the sample
            return "download"
    if suffix in MARKDOWN_SUFFIXES or media == "text/markdown":
        return "markdown"
    if media.startswith("text/") or suffix in TEXT_SUFFIXES or media in ("application/json", "application/x-yaml"):
        return "text"
    return "download"


def describe(path: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """The page's view of one resource."""
    with open(path, "rb") as handle:
        head = handle.read(SHOWN_LIMIT + 1)
    name = str(meta.get("name") or meta.get("sha256") or path.name)
    kind = classify(name, str(meta.get("media_type") or ""), head[:4096])
    view: dict[str, Any] = {"kind": kind, "name": name, "size": path.stat().st_size, "meta": meta,
                            "truncated": len(head) > SHOWN_LIMIT, "text": None, "html": None}
    if kind in ("text", "markdown"):
        text = head[:SHOWN_LIMIT].decode("utf-8", "replace")
        view["text"] = text
        if kind == "markdown":
            view["html"] = Markup(markdown.render_markdown(text))  # noqa: S704 - sanitized by markdown.py
    return view


def raw_response(path: Path, meta: dict[str, Any]) -> Response:
    """The bytes, with a media type and disposition that never let a browser run them."""
    with open(path, "rb") as handle:
        head = handle.read(4096)
    name = str(meta.get("name") or path.name)
    kind = classify(name, str(meta.get("media_type") or ""), head)
    safe_name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(name).name)[:100] or "resource"
    if kind == "image":
        media, disposition = image_type(head) or "application/octet-stream", "inline"
    elif kind in ("text", "markdown"):
        media, disposition = "text/plain; charset=utf-8", "inline"
    else:
        stored = str(meta.get("media_type") or "application/octet-stream")
        media = "text/plain; charset=utf-8" if ACTIVE.search(stored) or ACTIVE.search(Path(name).suffix) \
            else stored
        disposition = "attachment"
    return FileResponse(path, media_type=media, headers={
        "Content-Disposition": f'{disposition}; filename="{safe_name}"', "X-Content-Type-Options": "nosniff",
        "Cache-Control": "private, no-store"})


def routes(pages: Pages) -> list[Route]:
    def readable(request: Request, sha256: str) -> tuple[Any, Any, Path, dict[str, Any]]:
        if not SHA256.match(sha256):
            raise NotFound(f"no resource {sha256[:64]}")
        user, session = pages.signed_in(request, session_run(request, sha256))
        path, meta = pages.daemon.visibility.readable_resource(sha256, user)
        return user, session, path, meta

    def session_run(request: Request, sha256: str) -> str | None:
        # a decision-link session reaches only its run's resources
        session = pages.session(request)
        if session is None or session.limited_to is None:
            return None
        run_id = session.limited_to[0]
        return run_id if run_id in pages.daemon.store.resource_runs(sha256) else f"{run_id}-not-this"

    async def page(request: Request) -> Response:
        sha256 = request.path_params["sha256"]
        user, session, path, meta = readable(request, sha256)
        return pages.render(request, "resource.html", session=session, user=user, sha256=sha256,
                            raw=f"/ui/resources/{sha256}/raw", resource=describe(path, meta))

    async def raw(request: Request) -> Response:
        _, _, path, meta = readable(request, request.path_params["sha256"])
        return raw_response(path, meta)

    def granted(request: Request) -> tuple[Path, dict[str, Any], str]:
        grant = links.verify_resource(pages.secrets, request.path_params["token"], pages.now())
        store = pages.daemon.store
        try:
            if grant.run_id not in store.resource_runs(grant.sha256):
                raise NotFound("this artifact is not one of the run's")
            return store.resource_path(grant.sha256), store.resource_meta(grant.sha256), grant.sha256
        except NotFound:
            raise NotFound("this artifact no longer exists") from None

    async def linked_page(request: Request) -> Response:
        path, meta, sha256 = granted(request)
        return pages.render(request, "resource.html", session=pages.session(request), sha256=sha256,
                            raw=f"/ui/artifacts/{request.path_params['token']}/raw", resource=describe(path, meta))

    async def linked_raw(request: Request) -> Response:
        path, meta, _ = granted(request)
        return raw_response(path, meta)

    return [
        Route("/resources/{sha256}", pages.guard(page), methods=["GET"]),
        Route("/resources/{sha256}/raw", pages.guard(raw), methods=["GET"]),
        Route("/artifacts/{token}", pages.guard(linked_page), methods=["GET"]),
        Route("/artifacts/{token}/raw", pages.guard(linked_raw), methods=["GET"]),
    ]

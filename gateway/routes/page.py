"""GET /: a chat page for trying the served models in a browser (no CDN, no build step).

The page is gateway/static/chat.html with the markdown renderer (static/markdown.js) put inline
where chat.html loads it: one response at the one open path, so the page works unchanged when
the gateway wants API keys (a <script src> request could not send the key), and no URL here
maps onto files on disk.
"""

from functools import cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter()

STATIC = Path(__file__).resolve().parent.parent / "static"
PAGE = STATIC / "chat.html"
INLINED = ("markdown.js",)  # <script src="NAME"></script> in chat.html -> the file's text inline


@cache  # the files ship with the package: read them once
def render_page() -> str:
    html = PAGE.read_text(encoding="utf-8")
    for name in INLINED:
        tag = f'<script src="{name}"></script>'
        script = (STATIC / name).read_text(encoding="utf-8")
        if tag not in html or "</script" in script.lower():
            raise RuntimeError(f"chat.html must load {name} once, and {name} must not contain '</script'")
        html = html.replace(tag, f"<script>\n{script}</script>")
    return html


@router.get("/", include_in_schema=False)
def chat_page() -> HTMLResponse:
    return HTMLResponse(render_page(), headers={"Cache-Control": "no-cache"})

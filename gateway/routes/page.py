"""GET /: a chat page (one static file, no CDN) for trying the served models in a browser."""

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

router = APIRouter()

PAGE = Path(__file__).resolve().parent.parent / "static" / "chat.html"


@router.get("/", include_in_schema=False)
async def chat_page() -> FileResponse:
    return FileResponse(PAGE, media_type="text/html")

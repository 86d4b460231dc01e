"""What the admin endpoints share: JSON answers (scrubbed), JSON errors and bounded JSON bodies."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import orjson

from tether.redaction import default_scrubber

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

__all__ = ["MAX_BODY", "answer", "json_body", "refuse"]

MAX_BODY: Final = 64 * 1024


def answer(status: int, body: Any) -> Response:
    """A JSON response; rows are scrubbed when written, this covers a secret registered since then."""
    from starlette.responses import Response

    content = default_scrubber().scrub_bytes(orjson.dumps(body))
    return Response(content, status_code=status, media_type="application/json")


def refuse(status: int, kind: str, message: str) -> Response:
    """A JSON error: ``{"error": {"type": kind, "message": message}}``."""
    return answer(status, {"error": {"type": kind, "message": message}})


async def json_body(request: Request, *, empty_ok: bool = False) -> dict[str, Any] | Response:
    """The request's JSON object, or the 400/413 answer to send."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            return refuse(413, "invalid_request", f"the body is larger than {MAX_BODY // 1024} KiB")
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body.strip() and empty_ok:
        return {}
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        return refuse(400, "invalid_request", "the body must be a JSON object")
    return data

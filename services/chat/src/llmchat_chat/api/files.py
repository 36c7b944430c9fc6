"""The Files API: uploads for batches (`purpose: batch`) and user data, only ever seen by their
owner. A batch's output and error files are read from the batch (api/batches.py), not stored."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from llmchat_chat.api.batches import batch_file
from llmchat_chat.api.deps import CallerDep, FilesDep, HistoryDep
from llmchat_chat.errors import InvalidRequest, PayloadTooLarge
from llmchat_chat.files import PURPOSES

router = APIRouter(tags=["files"])

UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "purpose": {"type": "string", "enum": list(PURPOSES)},
                    },
                }
            }
        },
    }
}
MAX_FILENAME = 255


@router.post("/v1/files", openapi_extra=UPLOAD_BODY)
async def upload_file(request: Request, caller: CallerDep, files: FilesDep) -> dict[str, Any]:
    """A multipart upload (`file`, `purpose`). The size cap holds while the body is read (the
    body cap of this path is the file's, and the file part is checked once parsed)."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidRequest("the body must be multipart/form-data with `file` and `purpose`", param="file")
    parser = MultiPartParser(request.headers, request.stream(), max_files=1, max_fields=4, max_part_size=4096)
    try:
        form = await parser.parse()
    except (MultiPartException, KeyError, ValueError) as exc:
        raise InvalidRequest(f"the multipart body is malformed: {exc}", param="file") from None
    try:
        upload = form.get("file")
        purpose = form.get("purpose")
        if not isinstance(upload, UploadFile):
            raise InvalidRequest("a file is required (the `file` part)", param="file")
        if purpose not in PURPOSES:
            raise InvalidRequest(f"purpose must be one of {', '.join(PURPOSES)}", param="purpose")
        size = upload.size or 0
        if size > files.settings.max_bytes:
            raise PayloadTooLarge(f"a file may hold at most {files.settings.max_bytes} bytes", param="file")
        filename = (upload.filename or "upload")[:MAX_FILENAME]
        upload.file.seek(0)
        stored = await files.add(caller.user_id, str(purpose), filename, upload.file, size)
    finally:
        await form.close()
    body: dict[str, Any] = stored.body()
    return body


@router.get("/v1/files")
async def list_files(
    caller: CallerDep,
    files: FilesDep,
    purpose: Annotated[str | None, Query(max_length=32)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    after: Annotated[str | None, Query(max_length=128)] = None,
    order: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc",
) -> dict[str, Any]:
    owned = [f for f in await files.owned(caller.user_id) if purpose is None or f.purpose == purpose]
    if order == "asc":
        owned.reverse()
    if after is not None:
        ids = [f.id for f in owned]
        owned = owned[ids.index(after) + 1 :] if after in ids else []
    page = owned[:limit]
    return {
        "object": "list",
        "data": [f.body() for f in page],
        "first_id": page[0].id if page else None,
        "last_id": page[-1].id if page else None,
        "has_more": len(owned) > limit,
    }


@router.get("/v1/files/{file_id}")
async def get_file(file_id: str, caller: CallerDep, files: FilesDep, history: HistoryDep) -> dict[str, Any]:
    made = await batch_file(history, caller.user_id, file_id)
    if made is not None:
        return await made.body()
    found: dict[str, Any] = (await files.find(caller.user_id, file_id)).body()
    return found


@router.get(
    "/v1/files/{file_id}/content",
    responses={200: {"description": "the file's bytes", "content": {"application/octet-stream": {}}}},
)
async def file_content(
    file_id: str, caller: CallerDep, files: FilesDep, history: HistoryDep
) -> StreamingResponse:
    made = await batch_file(history, caller.user_id, file_id)
    if made is not None:
        return StreamingResponse(made.lines(), media_type="application/jsonl")
    stored, chunks = await files.content(caller.user_id, file_id)
    return StreamingResponse(
        chunks,
        media_type="application/octet-stream",
        headers={"Content-Length": str(stored.bytes)},
    )


@router.delete("/v1/files/{file_id}")
async def delete_file(file_id: str, caller: CallerDep, files: FilesDep) -> dict[str, Any]:
    await files.delete(caller.user_id, file_id)
    return {"id": file_id, "object": "file", "deleted": True}

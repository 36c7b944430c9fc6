"""Files (`/v1/files`) in JetStream's object store (`llmchat_files`).

Why the object store: files are replicated with the streams and any edge reads them, with no
other server to run; the edge owns no tables, and Postgres would tie every read of a 200 MB
file to the database. An object's name is its file id; what the Files API shows of it (owner,
purpose, filename, creation time) is the object's description, as JSON. Objects of other
purposes (a batch's prepared lines) are never listed or served.

Reads stream the object's chunks one direct get at a time, and listing reads the objects'
metadata the same way: the edge writes the store, so it may create no consumer on it
(llmchat_common.launch.nats_auth), and nats-py's own `get` gathers the object in memory.
Quotas count the owner's objects when a file is added: a listing of the bucket, so the check
is as fresh as the upload (two uploads racing may both pass, by at most one file).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import IO, Any

from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import NotFoundError
from nats.js.object_store import ObjectStore
from pydantic import BaseModel, Field

from llmchat_chat.errors import ApiError, NotFound, PayloadTooLarge
from llmchat_common import subjects
from llmchat_common.messaging import list_objects, object_chunks, read_object

log = logging.getLogger(__name__)

PURPOSES = ("batch", "user_data")
# What the store holds besides users' files (never listed or served).
INTERNAL_PURPOSE = "batch_lines"
CHUNK_BYTES = 128 * 1024


class FileSettings(BaseModel):
    # One file at most (the upload is refused while it is read), and what one user may keep.
    max_bytes: int = Field(default=200 * 1024 * 1024, ge=1)
    quota_bytes: int = Field(default=2 * 1024 * 1024 * 1024, ge=1)
    quota_files: int = Field(default=1000, ge=1)


def new_file_id() -> str:
    return f"file-{uuid.uuid4().hex}"


@dataclass(frozen=True)
class StoredFile:
    id: str
    owner: str
    purpose: str
    filename: str
    bytes: int
    created_at: int

    def body(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }


def _described(info: js_api.ObjectInfo) -> StoredFile | None:
    try:
        meta = json.loads(info.description or "")
        return StoredFile(
            info.name,
            meta["owner"],
            meta["purpose"],
            meta["filename"],
            info.size or 0,
            int(meta["created_at"]),
        )
    except (ValueError, KeyError, TypeError):
        return None


class FileStore:
    def __init__(self, store: ObjectStore, js: JetStreamContext, settings: FileSettings) -> None:
        self._store = store
        self._js = js
        self.settings = settings

    async def owned(self, owner: str) -> list[StoredFile]:
        """The owner's files (not internal objects), newest first."""
        infos = await list_objects(self._js)
        found = [f for f in map(_described, infos) if f is not None and f.owner == owner]
        return sorted(
            (f for f in found if f.purpose != INTERNAL_PURPOSE),
            key=lambda f: (f.created_at, f.id),
            reverse=True,
        )

    async def add(self, owner: str, purpose: str, filename: str, data: IO[bytes], size: int) -> StoredFile:
        if size > self.settings.max_bytes:
            raise PayloadTooLarge(f"a file may hold at most {self.settings.max_bytes} bytes", param="file")
        mine = await self.owned(owner)
        if len(mine) >= self.settings.quota_files:
            raise ApiError(f"you may keep at most {self.settings.quota_files} files", param="file")
        if sum(f.bytes for f in mine) + size > self.settings.quota_bytes:
            raise ApiError(
                f"your files would exceed your quota of {self.settings.quota_bytes} bytes", param="file"
            )
        return await self.put(new_file_id(), owner, purpose, filename, data)

    async def put(
        self, name: str, owner: str, purpose: str, filename: str, data: IO[bytes] | bytes
    ) -> StoredFile:
        created = int(time.time())
        description = json.dumps(
            {"owner": owner, "purpose": purpose, "filename": filename, "created_at": created}
        )
        meta = js_api.ObjectMeta(
            name=name,
            description=description,
            options=js_api.ObjectMetaOptions(max_chunk_size=CHUNK_BYTES),
        )
        info = await self._store.put(name, data, meta=meta)  # type: ignore[arg-type]
        return StoredFile(name, owner, purpose, filename, info.size or 0, created)

    async def find(self, owner: str, file_id: str) -> StoredFile:
        """The owner's file, or 404 (another user's file is not found either)."""
        stored, _ = await self._find(owner, file_id)
        return stored

    async def _find(self, owner: str, file_id: str) -> tuple[StoredFile, js_api.ObjectInfo]:
        missing = NotFound(f"no file with id {file_id!r}", code="file_not_found", param="file_id")
        try:
            subjects.check_token(file_id)
            info = await self._store.get_info(file_id)
        except (ValueError, NotFoundError):
            raise missing from None
        stored = _described(info)
        if stored is None or stored.owner != owner or stored.purpose == INTERNAL_PURPOSE:
            raise missing
        return stored, info

    async def content(self, owner: str, file_id: str) -> tuple[StoredFile, AsyncIterator[bytes]]:
        stored, info = await self._find(owner, file_id)
        return stored, self._chunks(info)

    async def read(self, name: str) -> bytes:
        """An object whole (the batch input the edge validates: bounded by `max_bytes`)."""
        return await read_object(self._js, self._store, name)

    def _chunks(self, info: js_api.ObjectInfo) -> AsyncIterator[bytes]:
        return object_chunks(self._js, info)

    async def drop_internal(self, name: str) -> None:
        """An internal object gone (a batch's prepared lines, once loaded); none is fine."""
        try:
            await self._store.delete(name)
        except NotFoundError:
            pass
        except Exception as exc:  # noqa: BLE001 - tried again on the next read
            log.warning("internal object not dropped", extra={"object": name, "error": repr(exc)})

    async def delete(self, owner: str, file_id: str) -> None:
        await self._find(owner, file_id)
        with contextlib.suppress(NotFoundError):
            await self._store.delete(file_id)

"""Conversions: `POST /uploads` stores files and queues them, `GET /uploads/{id}...` reports the
PNGs made of them, and `GET /files/{path}` downloads any stored original or PNG."""

import asyncio
import contextlib
import mimetypes
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any, Literal

import structlog
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from errands.conversions import store
from errands.conversions.convert import MAGIC_BYTES_NEEDED, detect_kind
from errands.core import paging
from errands.core.errors import (
    ErrandsError,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    Unprocessable,
    UnsupportedMediaType,
)
from errands.core.resources import Resources, get_resources
from errands.core.storage import (
    InvalidKey,
    Storage,
    StorageUnavailable,
    StoredFileMissing,
    Writer,
    check_key,
)
from errands.core.validation import check_http_url, check_target

__all__ = [
    "FileView",
    "ImageView",
    "OriginalView",
    "UploadCreated",
    "UploadImages",
    "UploadList",
    "UploadOriginals",
    "UploadStatus",
    "UploadView",
    "router",
    "upload_status",
]

log = structlog.get_logger(__name__)

router = APIRouter(tags=["conversions"])

FILES_FIELD = "files"
CALLBACK_FIELD = "callback_url"
MAX_CALLBACK_URL_CHARS = 2048
MAX_FILENAME_CHARS = 255
EXTENSIONS = {"pdf": "pdf", "png": "png", "jpeg": "jpg"}

Status = Literal["queued", "processing", "done", "failed"]
ResourcesDep = Annotated[Resources, Depends(get_resources)]


class Problem(BaseModel):
    detail: str


NOT_FOUND: dict[int | str, dict[str, object]] = {
    404: {"model": Problem, "description": "No such upload"}
}
# Stands for a client that went away mid-request (nginx's convention): logged and counted,
# never sent, since nobody is left to read it.
CLIENT_CLOSED_REQUEST = 499

UPLOAD_ID = "6f0c2a4e-8a4b-4d0e-9b8e-2d6f1c9a7b31"
FILE_ID = "1d2e3f40-5a6b-4c7d-8e9f-0a1b2c3d4e5f"
PNG_PATH = f"/files/uploads/{UPLOAD_ID}/{FILE_ID}/page-0001.png"
PREVIEW_PATH = f"/files/uploads/{UPLOAD_ID}/{FILE_ID}/page-0001.preview.png"
ORIGINAL_PATH = f"/files/uploads/{UPLOAD_ID}/{FILE_ID}/original.pdf"


def _example(example: Any) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": [example]})


class UploadCreated(BaseModel):
    model_config = _example({"id": UPLOAD_ID, "status": "queued"})

    id: uuid.UUID
    status: Literal["queued"]


class ImageView(BaseModel):
    page: int = Field(description="Page number, from 1 (images have one page).")
    path: str = Field(description="Where to download the PNG: `GET <path>`.")
    width: int
    height: int
    preview: str | None = Field(
        description="Where to download a small preview PNG of the page: `GET <preview>`."
    )


IMAGE_EXAMPLE = {
    "page": 1,
    "path": PNG_PATH,
    "width": 1241,
    "height": 1754,
    "preview": PREVIEW_PATH,
}
FILE_EXAMPLE = {
    "id": FILE_ID,
    "filename": "scan.pdf",
    "type": "pdf",
    "size_bytes": 48213,
    "original_path": ORIGINAL_PATH,
    "status": "done",
    "error": None,
    "attempts": 1,
    "images": [IMAGE_EXAMPLE],
}


class FileView(BaseModel):
    id: uuid.UUID
    filename: str = Field(description="The name the file was uploaded with (metadata only).")
    type: Literal["pdf", "png", "jpeg"] = Field(description="Detected from the content.")
    size_bytes: int
    original_path: str = Field(description="Where to download the original: `GET <path>`.")
    status: Status
    error: str | None = Field(description="Why the file failed, when it did.")
    attempts: int = Field(description="Conversion processes started for this file.")
    images: list[ImageView]


class UploadView(BaseModel):
    model_config = _example({"id": UPLOAD_ID, "status": "done", "files": [FILE_EXAMPLE]})

    id: uuid.UUID
    status: Status
    files: list[FileView]


STATUS_EXAMPLE = {
    "id": UPLOAD_ID,
    "status": "processing",
    "files_total": 2,
    "files_done": 1,
    "files_failed": 0,
}


class UploadStatus(BaseModel):
    model_config = _example(STATUS_EXAMPLE)

    id: uuid.UUID
    status: Status
    files_total: int
    files_done: int
    files_failed: int


class UploadSummary(UploadStatus):
    created_at: datetime


class UploadList(BaseModel):
    model_config = _example(
        {
            "uploads": [STATUS_EXAMPLE | {"created_at": "2026-12-01T23:05:08.412Z"}],
            "next_cursor": "MjAyNi0xMi0wMVQyMzowNTowOC40MTIwMDArMDA6MDB8NmYwYzJhNGUtM2IxZC00Yz"
            "U1LTllOGEtMmY3ZDZiMWMwYTkz",
        }
    )

    uploads: list[UploadSummary] = Field(description="Newest first.")
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last page."
    )


class FileImage(ImageView):
    file_id: uuid.UUID
    filename: str


class UploadImages(BaseModel):
    model_config = _example(
        {
            "id": UPLOAD_ID,
            "status": "done",
            "images": [IMAGE_EXAMPLE | {"file_id": FILE_ID, "filename": "scan.pdf"}],
        }
    )

    id: uuid.UUID
    status: Status
    images: list[FileImage]


class OriginalView(BaseModel):
    file_id: uuid.UUID
    filename: str
    type: Literal["pdf", "png", "jpeg"]
    size_bytes: int
    path: str


class UploadOriginals(BaseModel):
    model_config = _example(
        {
            "id": UPLOAD_ID,
            "originals": [
                {
                    "file_id": FILE_ID,
                    "filename": "scan.pdf",
                    "type": "pdf",
                    "size_bytes": 48213,
                    "path": ORIGINAL_PATH,
                }
            ],
        }
    )

    id: uuid.UUID
    originals: list[OriginalView]


def upload_status(statuses: list[str]) -> Status:
    """One status for an upload: done when every file is; failed when all finished but one
    failed; processing once any file started or finished; queued before that."""
    if all(status == "done" for status in statuses):
        return "done"
    if any(status in ("queued", "processing") for status in statuses):
        return "queued" if all(status == "queued" for status in statuses) else "processing"
    return "failed"


def clean_filename(raw: str) -> str:
    """The uploaded name without folders or control characters, kept only to show it back."""
    name = raw.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(char for char in name if char.isprintable()).strip()
    return name[:MAX_FILENAME_CHARS] or "file"


FILES_PREFIX = "/files/"


def file_path(key: str) -> str:
    return f"{FILES_PREFIX}{key}"


class _IncomingFile:
    """One file part of the request while it streams in: held back until its type is known."""

    def __init__(self, upload_id: uuid.UUID, filename: str) -> None:
        self.id = uuid.uuid4()
        self.upload_id = upload_id
        self.filename = filename
        self.head = bytearray()
        self.kind: str | None = None
        self.writer: Writer | None = None

    @property
    def key(self) -> str:
        assert self.kind is not None
        return f"uploads/{self.upload_id}/{self.id}/original.{EXTENSIONS[self.kind]}"

    async def write(self, storage: Storage, chunk: bytes) -> None:
        if self.writer is None:
            self.head += chunk
            if len(self.head) >= MAGIC_BYTES_NEEDED:
                await self._start(storage)
        else:
            await self.writer.write(chunk)

    async def finish(self, storage: Storage) -> store.NewFile:
        if self.writer is None:
            await self._start(storage)
        assert self.writer is not None and self.kind is not None
        await self.writer.commit()
        return store.NewFile(
            id=self.id,
            filename=self.filename,
            kind=self.kind,
            size_bytes=self.writer.bytes_written,
            original_key=self.key,
        )

    async def _start(self, storage: Storage) -> None:
        self.kind = detect_kind(bytes(self.head))
        if self.kind is None:
            raise UnsupportedMediaType(
                f"{self.filename!r} is not a PDF, PNG or JPEG file (judged by its content)"
            )
        self.writer = await storage.open_write(self.key)
        await self.writer.write(bytes(self.head))
        self.head.clear()


class _UploadReader:
    """Streams a multipart body into storage, file by file, within the byte and file caps.

    The parser calls back synchronously; the callbacks only note events, which are then
    written out with `await` between the chunks the request delivers.
    """

    def __init__(self, upload_id: uuid.UUID, storage: Storage, max_files: int) -> None:
        self.upload_id = upload_id
        self.storage = storage
        self.max_files = max_files
        self.stored: list[store.NewFile] = []
        self.current: _IncomingFile | None = None
        self.callback_url: str | None = None
        self._text: bytearray | None = None  # the callback_url field while it arrives
        self._events: list[tuple[str, bytes]] = []
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._on_part_begin,
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
        }

    def _on_part_begin(self) -> None:
        self._disposition = b""

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = self._header_value = b""

    def _on_headers_finished(self) -> None:
        self._events.append(("part", self._disposition))

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        self._events.append(("data", bytes(data[start:end])))

    def _on_part_end(self) -> None:
        self._events.append(("end", b""))

    async def write_events(self) -> None:
        events, self._events = self._events, []
        for event, data in events:
            if event == "part":
                self.current = self._start_part(data)
            elif event == "data" and self.current is not None:
                await self.current.write(self.storage, data)
            elif event == "data" and self._text is not None:
                self._text += data
                if len(self._text) > MAX_CALLBACK_URL_CHARS:
                    raise Unprocessable(
                        f"callback_url is longer than {MAX_CALLBACK_URL_CHARS} characters"
                    )
            elif event == "end" and self.current is not None:
                file, self.current = self.current, None
                self.stored.append(await file.finish(self.storage))
            elif event == "end" and self._text is not None:
                self.callback_url, self._text = self._text.decode("utf-8", "replace"), None

    def _start_part(self, disposition: bytes) -> _IncomingFile | None:
        _, params = parse_options_header(disposition)
        name = params.get(b"name", b"").decode("utf-8", "replace")
        if name == CALLBACK_FIELD:
            if self.callback_url is not None:
                raise ErrandsError(f"send {CALLBACK_FIELD!r} at most once")
            self._text = bytearray()
            return None
        if name != FILES_FIELD:
            raise ErrandsError(
                f"unexpected form field {name!r}: send each file as a {FILES_FIELD!r} field"
                f" (and optionally one {CALLBACK_FIELD!r})"
            )
        if len(self.stored) >= self.max_files:
            raise PayloadTooLarge(f"too many files: at most {self.max_files} per upload")
        # A part without a plain filename (none, or only RFC 5987's filename*) is still a file.
        filename = params.get(b"filename", b"").decode("utf-8", "replace")
        return _IncomingFile(self.upload_id, clean_filename(filename))

    async def discard(self) -> None:
        """Remove everything this request stored: the upload is refused as a whole. With the
        storage out of reach, what cannot be removed now is left to the sweep of abandoned
        writes (unfinished multipart uploads) or stays without a row, never served."""
        with contextlib.suppress(StorageUnavailable):
            if self.current is not None and self.current.writer is not None:
                await self.current.writer.discard()
        for file in self.stored:
            try:
                await self.storage.delete(file.original_key)
            except StorageUnavailable:
                log.warning("upload_file_left_in_storage", key=file.original_key)


def check_callback_url(resources: Resources, url: str) -> None:
    """Refuse a callback URL that is not http(s) with a host, or that the outbound guard would
    refuse to call (a private address, unless private targets are allowed)."""
    try:
        check_http_url(url, field="callback_url")
    except ValueError as error:
        raise Unprocessable(str(error)) from None
    check_target(resources.http, url, field="callback_url")


UPLOAD_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "example": {FILES_FIELD: ["<the bytes of scan.pdf>", "<the bytes of photo.jpg>"]},
                "schema": {
                    "type": "object",
                    "required": [FILES_FIELD],
                    "properties": {
                        FILES_FIELD: {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                        },
                        CALLBACK_FIELD: {
                            "type": "string",
                            "format": "uri",
                            "maxLength": MAX_CALLBACK_URL_CHARS,
                            "description": "Sent `upload.done` or `upload.failed` (a signed"
                            " webhook) once every file is done or failed.",
                            "example": "https://example.com/hooks/uploads",
                        },
                    },
                },
            }
        },
    }
}


@router.post(
    "/uploads",
    summary="Upload files to convert",
    response_model=UploadCreated,
    openapi_extra=UPLOAD_BODY_DOC,
    responses={
        400: {"model": Problem, "description": "Not a multipart upload of files"},
        408: {"model": Problem, "description": "Still arriving when its time ran out"},
        413: {"model": Problem, "description": "Larger than the upload cap"},
        415: {"model": Problem, "description": "A file is not a PDF, PNG or JPEG"},
        422: {"model": Problem, "description": "The callback_url cannot be called"},
        503: {"model": Problem, "description": "The storage is out of reach; nothing was kept"},
    },
)
async def create_upload(request: Request, resources: ResourcesDep) -> dict[str, object] | Response:
    """Upload one or several PDF, PNG or JPEG files as multipart `files`; answers at once with
    the upload's id while the files are converted in the background. With a `callback_url`
    field, an `upload.done` or `upload.failed` webhook is sent there when every file is done or
    failed."""
    settings = resources.settings
    content_type, params = parse_options_header(request.headers.get("content-type"))
    boundary = params.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise ErrandsError("send the files as multipart/form-data, each in a 'files' field")
    cap = settings.upload_max_bytes
    too_large = PayloadTooLarge(f"the upload is larger than the {cap}-byte limit")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise too_large

    upload_id = uuid.uuid4()
    reader = _UploadReader(upload_id, resources.storage, settings.upload_max_files)
    received = 0
    # Bounds how long a write may stay open, so the sweep can tell an abandoned one by its age.
    arrival = asyncio.timeout(settings.upload_max_duration_s)
    try:
        async with arrival:
            parser = MultipartParser(boundary, reader.callbacks())  # type: ignore[arg-type]
            async for chunk in request.stream():
                received += len(chunk)
                if received > cap:
                    raise too_large
                parser.write(chunk)
                await reader.write_events()
            parser.finalize()
            await reader.write_events()
        if reader.current is not None or not reader.stored:
            raise ErrandsError("no complete file in the upload: send one or more 'files'")
        if reader.callback_url is not None:
            check_callback_url(resources, reader.callback_url)
        await store.create_upload(resources.pool, upload_id, reader.stored, reader.callback_url)
    except FormParserError:
        await reader.discard()
        raise ErrandsError("the multipart body is malformed") from None
    except ClientDisconnect:
        await reader.discard()
        log.info("upload_abandoned", upload_id=str(upload_id), received_bytes=received)
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    except TimeoutError:
        await reader.discard()
        if not arrival.expired():
            raise
        raise RequestTimeout(
            f"the upload did not arrive within {settings.upload_max_duration_s:g} s"
        ) from None
    except BaseException:
        await reader.discard()
        raise
    return {"id": upload_id, "status": "queued"}


async def _files_of(resources: Resources, upload_id: uuid.UUID) -> list[store.StoredFile]:
    files = await store.files_of_upload(resources.pool, upload_id)
    if files is None:
        raise NotFound(f"no upload with id {upload_id}")
    return files


def _image_view(image: store.Image) -> ImageView:
    return ImageView(
        page=image.page,
        path=file_path(image.storage_key),
        width=image.width,
        height=image.height,
        preview=file_path(image.preview_key) if image.preview_key else None,
    )


def _file_view(file: store.StoredFile) -> FileView:
    return FileView(
        id=file.id,
        filename=file.filename,
        type=file.kind,
        size_bytes=file.size_bytes,
        original_path=file_path(file.original_key),
        status=file.status,
        error=file.error,
        attempts=file.attempts,
        images=[_image_view(image) for image in file.images],
    )


@router.get(
    "/uploads",
    summary="List uploads",
    response_model=UploadList,
    responses={400: {"model": Problem, "description": "The cursor is not one this API gave"}},
)
async def list_uploads(
    resources: ResourcesDep,
    status: Annotated[Status | None, Query(description="Only uploads in this status.")] = None,
    cursor: Annotated[
        str | None, Query(max_length=200, description="`next_cursor` of the previous page.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100, description="Uploads per page.")] = 20,
) -> UploadList:
    """Uploads newest first with their status and counts, a page at a time (keyset
    pagination: pages stay consistent while new uploads arrive)."""
    try:
        page, next_cursor = await store.list_uploads(
            resources.pool, status=status, limit=limit, cursor=cursor
        )
    except paging.BadCursor as error:
        raise ErrandsError(str(error)) from None
    return UploadList(
        uploads=[
            UploadSummary(
                id=upload.id,
                created_at=upload.created_at,
                status=upload.status,
                files_total=upload.files_total,
                files_done=upload.files_done,
                files_failed=upload.files_failed,
            )
            for upload in page
        ],
        next_cursor=next_cursor,
    )


@router.delete(
    "/uploads/{upload_id}",
    summary="Delete an upload",
    status_code=204,
    responses={204: {"description": "Deleted with its files"}, **NOT_FOUND},
)
async def delete_upload(upload_id: uuid.UUID, resources: ResourcesDep) -> Response:
    """Delete the upload, its originals, PNGs and previews; a conversion still running for it
    stops recording and removes what it made."""
    if not await store.delete_upload(resources.pool, resources.storage, upload_id):
        raise NotFound(f"no upload with id {upload_id}")
    return Response(status_code=204)


@router.get(
    "/uploads/{upload_id}",
    summary="Read an upload",
    response_model=UploadView,
    responses=NOT_FOUND,
)
async def read_upload(upload_id: uuid.UUID, resources: ResourcesDep) -> UploadView:
    """The upload's status and, per file, its original, status, error and PNGs."""
    files = await _files_of(resources, upload_id)
    return UploadView(
        id=upload_id,
        status=upload_status([file.status for file in files]),
        files=[_file_view(file) for file in files],
    )


@router.get(
    "/uploads/{upload_id}/status",
    summary="Read an upload's status",
    response_model=UploadStatus,
    responses=NOT_FOUND,
)
async def read_upload_status(upload_id: uuid.UUID, resources: ResourcesDep) -> UploadStatus:
    """Whether processing is done, with counts of files done and failed."""
    files = await _files_of(resources, upload_id)
    return UploadStatus(
        id=upload_id,
        status=upload_status([file.status for file in files]),
        files_total=len(files),
        files_done=sum(file.status == "done" for file in files),
        files_failed=sum(file.status == "failed" for file in files),
    )


@router.get(
    "/uploads/{upload_id}/images",
    summary="List an upload's PNGs",
    response_model=UploadImages,
    responses=NOT_FOUND,
)
async def read_upload_images(upload_id: uuid.UUID, resources: ResourcesDep) -> UploadImages:
    """Every PNG made so far, in file then page order, with its resolution."""
    files = await _files_of(resources, upload_id)
    return UploadImages(
        id=upload_id,
        status=upload_status([file.status for file in files]),
        images=[
            FileImage(file_id=file.id, filename=file.filename, **_image_view(image).model_dump())
            for file in files
            for image in file.images
        ],
    )


@router.get(
    "/uploads/{upload_id}/originals",
    summary="List an upload's originals",
    response_model=UploadOriginals,
    responses=NOT_FOUND,
)
async def read_upload_originals(upload_id: uuid.UUID, resources: ResourcesDep) -> UploadOriginals:
    """Where to download each uploaded file as it was received."""
    files = await _files_of(resources, upload_id)
    return UploadOriginals(
        id=upload_id,
        originals=[
            OriginalView(
                file_id=file.id,
                filename=file.filename,
                type=file.kind,
                size_bytes=file.size_bytes,
                path=file_path(file.original_key),
            )
            for file in files
        ],
    )


@router.get(
    "/files/{path:path}",
    summary="Download a stored file",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"image/png": {}, "image/jpeg": {}, "application/pdf": {}}},
        307: {"description": "With ERRANDS_STORAGE_PRESIGN: fetch it from this short-lived URL"},
        400: {"model": Problem, "description": "Not a valid file path"},
        404: {"model": Problem, "description": "No such file"},
        503: {"model": Problem, "description": "The storage is out of reach"},
    },
)
async def download_file(path: str, resources: ResourcesDep) -> Response:
    """Download a stored original, PNG or preview by the path an upload reported: `GET <path>`
    (the path starts with `/files/`; `/files/files/...` is taken the same way)."""
    try:
        key = check_key(path.removeprefix(FILES_PREFIX.lstrip("/")))
    except InvalidKey:
        raise ErrandsError(f"invalid file path: {path!r}") from None
    if not await store.is_stored_key(resources.pool, key):
        raise NotFound(f"no file at {file_path(key)}")
    url = await resources.storage.download_url(key)
    if url is not None:
        return RedirectResponse(url, status_code=307)
    try:
        chunks: AsyncIterator[bytes] = await resources.storage.read(key)
    except StoredFileMissing:
        raise NotFound(f"no file at {file_path(key)}") from None
    media_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
    return StreamingResponse(
        chunks, media_type=media_type, headers={"X-Content-Type-Options": "nosniff"}
    )

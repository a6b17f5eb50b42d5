"""nanoedit sessions: wire structs, turn tree, blob and session stores. No network, no engine."""

from sessions._check import check_session, check_store
from sessions._errors import (
    NanoeditError,
    SessionBusy,
    SessionError,
    SessionNotFound,
    StoreError,
    TurnNotFound,
)
from sessions._export import export_session, import_session
from sessions._files import BatchRecord, FileRef
from sessions._ops import checkout, delete, fork, redo, undo
from sessions._postgres import PostgresStore
from sessions._records import (
    SessionRecord,
    SessionSettings,
    SessionState,
    SessionSummary,
    TurnRecord,
    Usage,
    new_id,
)
from sessions._sqlite import SqliteBlobStore, SqliteStore, default_store_path
from sessions._store import (
    BlobStore,
    LeaseHolder,
    MemoryBlobStore,
    MemoryStore,
    SessionStore,
    intern_content,
    intern_turn,
)
from sessions._wire import (
    Blob,
    Content,
    FileData,
    Part,
    WireError,
    decode_content,
    decode_contents,
    decode_part,
    encode_contents,
    wire_contents,
)

__all__ = [
    "BatchRecord",
    "Blob",
    "BlobStore",
    "Content",
    "FileData",
    "FileRef",
    "LeaseHolder",
    "MemoryBlobStore",
    "MemoryStore",
    "NanoeditError",
    "Part",
    "PostgresStore",
    "SessionBusy",
    "SessionError",
    "SessionNotFound",
    "SessionRecord",
    "SessionSettings",
    "SessionState",
    "SessionStore",
    "SessionSummary",
    "SqliteBlobStore",
    "SqliteStore",
    "StoreError",
    "TurnNotFound",
    "TurnRecord",
    "Usage",
    "WireError",
    "check_session",
    "check_store",
    "checkout",
    "decode_content",
    "decode_contents",
    "decode_part",
    "default_store_path",
    "delete",
    "encode_contents",
    "export_session",
    "fork",
    "import_session",
    "intern_content",
    "intern_turn",
    "new_id",
    "redo",
    "undo",
    "wire_contents",
]

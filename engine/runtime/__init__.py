"""The runtime: `Engine`, `Session` (the owner of turn state), the turn pipeline, store
leases, history uploads (Files API) and Batch API jobs.
"""

from engine.runtime._batch import (
    FINAL_STATES,
    INLINE_LIMIT,
    Batches,
    BatchItem,
    BatchJobFailed,
    BatchResult,
    read_items,
)
from engine.runtime._engine import Engine
from engine.runtime._history_files import (
    EXPIRY_MARGIN_S,
    FileUploader,
    HistoryFiles,
    missing_file_names,
)
from engine.runtime._lease import (
    Lease,
    describe_holder,
    holder_is_dead,
    new_owner,
)
from engine.runtime._pipeline import (
    Gate,
    TurnRun,
)
from engine.runtime._regions import Region
from engine.runtime._session import Session, TurnStream
from engine.runtime._shield import (
    finish,
)
from engine.runtime._turns import (
    ROLES,
    Image,
    ImageInput,
    Reference,
    Turn,
    build_user_content,
    sniff_mime,
)

__all__ = [
    "EXPIRY_MARGIN_S",
    "FINAL_STATES",
    "INLINE_LIMIT",
    "ROLES",
    "BatchItem",
    "BatchJobFailed",
    "BatchResult",
    "Batches",
    "Engine",
    "FileUploader",
    "Gate",
    "HistoryFiles",
    "Image",
    "ImageInput",
    "Lease",
    "Reference",
    "Region",
    "Session",
    "Turn",
    "TurnRun",
    "TurnStream",
    "build_user_content",
    "describe_holder",
    "finish",
    "holder_is_dead",
    "missing_file_names",
    "new_owner",
    "read_items",
    "sniff_mime",
]

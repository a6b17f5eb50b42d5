"""The Batch API: `:batchGenerateContent` with inline requests or a JSONL input file, the job's
operation (`GET /v1beta/batches/ID`), listing, cancel and delete.

A job goes PENDING -> RUNNING -> SUCCEEDED over `batch_seconds` (a quarter of it pending); one
still unfinished after `batch_expiry` seconds ends EXPIRED with no results. Each item is answered
like a generateContent call and may fail through the fault grammar (its error is kept in the
results, the job still succeeds). An input file that is not JSONL fails the job.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import msgspec
import structlog
from aiohttp import web

from engine.emulator._gemini import admit, answer_request
from engine.emulator._generate import ApiFailure, invalid
from engine.emulator._http import STATE, ServerState, check_gemini_key, json_body, json_response
from engine.emulator._models import model_spec
from engine.emulator._vault import BatchJob, rfc3339
from sessions import ModelSpec

__all__ = ["cancel_batches", "handle_batch", "handle_batch_create", "handle_list_batches"]

log = structlog.get_logger("nanoedit.emulator")

_any = msgspec.json.Decoder()
_PENDING_SHARE = 0.25
_META_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1beta.GenerateContentBatch"
_OUTPUT_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1beta.GenerateContentBatchOutput"


def _items_inline(requests: Any) -> list[tuple[str, bytes]]:
    if not isinstance(requests, list) or not requests:
        raise invalid("* batch.input_config.requests.requests: at least one request is needed")
    items = []
    for n, item in enumerate(requests, start=1):
        if not isinstance(item, dict) or not isinstance(item.get("request"), dict):
            raise invalid(f"* batch.input_config.requests.requests[{n - 1}]: request missing")
        meta = item.get("metadata")
        key = meta.get("key") if isinstance(meta, dict) else None
        items.append((str(key) if key is not None else str(n), json_body(item["request"])))
    return items


def _items_from_file(data: bytes) -> list[tuple[str, bytes]]:
    """(key, request) per JSONL line; ValueError for a line that is not one."""
    items = []
    for n, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            doc = _any.decode(line)
        except msgspec.DecodeError as exc:
            raise ValueError(f"line {n}: {exc}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("request"), dict):
            raise ValueError(f'line {n}: expected {{"key": ..., "request": {{...}}}}')
        items.append((str(doc.get("key", n)), json_body(doc["request"])))
    if not items:
        raise ValueError("the input file has no requests")
    return items


def _operation(job: BatchJob) -> dict[str, Any]:
    failed = sum(1 for r in job.results if "error" in r)
    meta: dict[str, Any] = {
        "@type": _META_TYPE,
        "model": f"models/{job.model}",
        "displayName": job.display_name,
        "createTime": rfc3339(job.created),
        "updateTime": rfc3339(job.updated or job.created),
        "state": job.state,
        "name": f"batches/{job.id}",
        "batchStats": {
            "requestCount": str(len(job.items)),
            "successfulRequestCount": str(len(job.results) - failed),
            "failedRequestCount": str(failed),
            "pendingRequestCount": str(len(job.items) - len(job.results)),
        },
    }
    out: dict[str, Any] = {"name": f"batches/{job.id}", "metadata": meta, "done": job.done}
    if job.error is not None:
        out["error"] = job.error
    elif job.state == "BATCH_STATE_SUCCEEDED":
        if job.output_file is not None:
            out["response"] = {"@type": _OUTPUT_TYPE, "responsesFile": job.output_file}
        else:
            inlined = [
                {k: v for k, v in r.items() if k != "key"} | {"metadata": {"key": r["key"]}}
                for r in job.results
            ]
            out["response"] = {
                "@type": _OUTPUT_TYPE,
                "inlinedResponses": {"inlinedResponses": inlined},
            }
    return out


async def handle_batch_create(request: web.Request, state: ServerState, model: str) -> web.Response:
    """POST /v1beta/models/{model}:batchGenerateContent."""
    body = await admit(request, state, "batchGenerateContent", model)
    spec = model_spec(model, request)
    try:
        doc = _any.decode(body)
    except msgspec.DecodeError as exc:
        raise invalid(f"Invalid JSON payload received. {exc}") from None
    batch = doc.get("batch") if isinstance(doc, dict) else None
    if not isinstance(batch, dict):
        raise invalid("* batch: batch is not specified")
    config = batch.get("inputConfig") or batch.get("input_config")
    if not isinstance(config, dict):
        raise invalid("* batch.input_config: input_config is not specified")
    file_name = config.get("fileName") or config.get("file_name")
    error: dict[str, Any] | None = None
    if file_name:
        stored = state.files.get(str(file_name).removeprefix("files/"))
        try:
            items = _items_from_file(stored.data)
        except ValueError as exc:
            items, error = [], {"code": 400, "message": f"Invalid input file: {exc}"}
    else:
        requests = config.get("requests")
        items = _items_inline(requests.get("requests") if isinstance(requests, dict) else None)
    job = BatchJob(
        id=secrets.token_hex(8),
        model=spec.id,
        display_name=str(batch.get("displayName") or batch.get("display_name") or ""),
        items=items,
        from_file=bool(file_name),
        created=time.time(),
    )
    state.batches[job.id] = job
    if error is not None:
        job.state, job.error, job.updated = "BATCH_STATE_FAILED", error, job.created
    else:
        job.task = asyncio.create_task(_run(state, job, spec, request))
    return json_response(_operation(job))


async def _run(state: ServerState, job: BatchJob, spec: ModelSpec, request: web.Request) -> None:
    settings = state.settings
    total = settings.batch_seconds
    deadline = job.created + settings.batch_expiry
    try:
        await asyncio.sleep(min(total * _PENDING_SHARE, settings.batch_expiry))
        if time.time() >= deadline:
            return _end(job, "BATCH_STATE_EXPIRED")
        job.state, job.updated = "BATCH_STATE_RUNNING", time.time()
        for key, body in job.items:
            decision = state.decide(request, "batchItem", body)
            try:
                answer = await answer_request(state, spec, body, decision)
            except ApiFailure as failure:
                error = {
                    "code": failure.status,
                    "message": failure.message,
                    "status": failure.google_status,
                }
                job.results.append({"key": key, "error": error})
            else:
                job.results.append({"key": key, "response": msgspec.Raw(answer)})
        rest = job.created + total - time.time()
        if job.created + total > deadline:
            await asyncio.sleep(max(deadline - time.time(), 0))
            job.results.clear()
            return _end(job, "BATCH_STATE_EXPIRED")
        if rest > 0:
            await asyncio.sleep(rest)
        if job.from_file:
            lines = b"".join(json_body(r) + b"\n" for r in job.results)
            stored = state.files.add("application/jsonl", lines, f"batch-{job.id}-output", "")
            job.output_file = f"files/{stored.id}"
        _end(job, "BATCH_STATE_SUCCEEDED")
    except asyncio.CancelledError:
        if not job.done:
            _end(job, "BATCH_STATE_CANCELLED")
        raise
    except Exception as exc:  # a bug must end the job, not leave it running forever
        log.exception("emulator.batch_failed", batch=job.id)
        job.error = {"code": 500, "message": f"Internal error: {type(exc).__name__}"}
        _end(job, "BATCH_STATE_FAILED")


def _end(job: BatchJob, state: str) -> None:
    job.state, job.updated = state, time.time()


def _job(request: web.Request, state: ServerState, name: str) -> BatchJob:
    job = state.batches.get(name)
    if job is None:
        raise ApiFailure(404, f"Batch batches/{name} not found.")
    return job


async def handle_batch(request: web.Request) -> web.Response:
    """GET /v1beta/batches/{id}, POST .../{id}:cancel, DELETE .../{id}."""
    state = request.app[STATE]
    check_gemini_key(request, state.settings.api_key)
    name, _, method = request.match_info["name"].partition(":")
    job = _job(request, state, name)
    if request.method == "GET" and not method:
        return json_response(_operation(job))
    if request.method == "POST" and method == "cancel":
        if not job.done:
            if job.task is not None:
                job.task.cancel()
            _end(job, "BATCH_STATE_CANCELLED")
        return json_response({})
    if request.method == "DELETE" and not method:
        if job.task is not None and not job.done:
            job.task.cancel()
        del state.batches[name]
        return json_response({})
    raise ApiFailure(404, f"Method not found: {method or request.method}.")


async def handle_list_batches(request: web.Request) -> web.Response:
    """GET /v1beta/batches: every job, newest first."""
    state = request.app[STATE]
    check_gemini_key(request, state.settings.api_key)
    jobs = sorted(state.batches.values(), key=lambda j: j.created, reverse=True)
    return json_response({"operations": [_operation(j) for j in jobs]})


async def cancel_batches(app: web.Application) -> None:
    """On shutdown: stop every running job."""
    tasks = [j.task for j in app[STATE].batches.values() if j.task is not None and not j.done]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

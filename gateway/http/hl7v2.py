"""HL7v2 over HTTP: POST /hl7v2 with an ER7 message as the body, answered with its ACK; and the
operators' view of the inputs received: the messages (list, show, reprocess) and the documents
(list, reprocess; their content is not shown)."""
from __future__ import annotations

from flask import Blueprint, Response, current_app, g, jsonify, request

from gateway.access.context import ADMIN, SYSTEM
from gateway.fhir.responses import FhirError, request_body, require_content_type
from gateway.services import feeds, messages, received_documents
from gateway.services.ingest import HEAD_KEPT, STATUSES
from gateway.storage.schema import MAX_ID

hl7v2 = Blueprint("hl7v2", __name__)

RAW_ID = f"<int(max={MAX_ID}):raw_id>"
# The HL7 over HTTP specification's type, the name its own example gives it (without `x-`, as its
# later drafts and HAPI name it), and the generic ones engines send.
ER7_TYPES = {feeds.ER7, "application/hl7-v2+er7", "application/hl7-v2", "application/edi-hl7", "text/plain"}


def _ack_response(reply: feeds.Reply, status: int = 200) -> Response:
    if reply.ack is None:
        return Response(status=204)  # the sender asked for no acknowledgment (MSH-15/16 NE)
    response = Response(reply.ack, status=status, headers={"X-HL7-Ack-Code": reply.code})
    # In the character set the message came in, which the request's charset named if it did (the
    # ACK is written in the message's): HL7 over HTTP asks the answer to name it again.
    charset = request.mimetype_params.get("charset")
    response.headers["Content-Type"] = feeds.ER7 + (f"; charset={charset}" if charset else "")
    return response


@hl7v2.before_request
def operators_and_feeders_only():
    """Feeding systems post messages; operators (admin) list and reprocess them, and the documents."""
    access = g.repository.access
    if request.endpoint == "hl7v2.post_message":
        access.require(access.role == SYSTEM, "post HL7v2 messages (a feeding system's token is needed)")
    else:
        access.require(access.role == ADMIN, "manage received messages and documents (an admin token is needed)")


@hl7v2.post("/hl7v2")
def post_message():
    require_content_type(ER7_TYPES, f"is not an ER7 message ({', '.join(sorted(ER7_TYPES))})")
    settings = current_app.config["SETTINGS"]
    if request.content_length and request.content_length > settings.mllp_max_bytes:
        head = request.stream.read(HEAD_KEPT)
        reply = feeds.refuse_oversized(g.repository, head, request.content_length, settings.mllp_max_bytes,
                                       "hl7v2-http")
        return _ack_response(reply, 413)
    reply = feeds.receive(g.repository, request_body(), channel="hl7v2-http",
                          max_bytes=settings.max_document_bytes, content_type=request.content_type or feeds.ER7)
    return _ack_response(reply)


def _listing(path: str, key: str, channels: tuple[str, ...]) -> Response:
    """A page of the inputs on these channels, newest first, and the link to the next."""
    status = request.args.get("status") or None
    if status is not None and status not in STATUSES:
        raise FhirError(400, f"status is one of {', '.join(STATUSES)}")
    try:
        limit = int(request.args.get("_count", "100"))
        before = int(request.args["before"]) if request.args.get("before") else None
    except ValueError:
        raise FhirError(400, "_count and before are integers") from None
    if limit < 1:
        raise FhirError(400, "_count is at least 1")
    if before is not None and not 1 <= before <= MAX_ID:
        raise FhirError(400, f"before is an id, from 1 to {MAX_ID}")
    page = min(limit, 1000)
    found = messages.list_messages(g.repository, status, page, before, channels)
    return jsonify({key: [m.as_dict() for m in found],
                    "next": f"{path}?before={found[-1].id}" + (f"&status={status}" if status else "")
                    if len(found) == page else None})


@hl7v2.get("/hl7v2/messages")
def list_messages():
    return _listing("/hl7v2/messages", "messages", messages.HL7V2_CHANNELS)


@hl7v2.get("/documents/received")
def list_documents():
    return _listing("/documents/received", "documents", received_documents.DOCUMENT_CHANNELS)


@hl7v2.get(f"/documents/received/{RAW_ID}")
def show_document(raw_id: int):
    found = received_documents.describe(g.repository, raw_id)
    if found is None:
        raise FhirError(404, f"no document {raw_id} received", code="not-found")
    return jsonify(found)


@hl7v2.post(f"/documents/received/{RAW_ID}/reprocess")
def reprocess_document(raw_id: int):
    try:
        reprocessed = received_documents.reprocess(g.repository, raw_id, current_app.config["SETTINGS"])
    except LookupError as exc:
        raise FhirError(404, str(exc), code="not-found") from None
    except ValueError as exc:
        raise FhirError(409, str(exc), code="conflict") from None
    return jsonify(reprocessed.__dict__)


@hl7v2.post("/documents/received/reprocess-failed")
def reprocess_failed_documents():
    done, left = received_documents.reprocess_failed(g.repository, current_app.config["SETTINGS"])
    return jsonify({"reprocessed": [reprocessed.__dict__ for reprocessed in done],
                    "not_reprocessed": [{"raw_id": raw_id, "why": why} for raw_id, why in left]})


@hl7v2.get(f"/hl7v2/messages/{RAW_ID}")
def show_message(raw_id: int):
    found = messages.get_message(g.repository, raw_id)
    if found is None:
        raise FhirError(404, f"no HL7v2 message {raw_id}", code="not-found")
    found.pop("body")
    return jsonify(found)


@hl7v2.post(f"/hl7v2/messages/{RAW_ID}/reprocess")
def reprocess_message(raw_id: int):
    settings = current_app.config["SETTINGS"]
    try:
        reply = messages.reprocess(g.repository, raw_id, settings.max_document_bytes)
    except LookupError as exc:
        raise FhirError(404, str(exc), code="not-found") from None
    except (ValueError, feeds.MessageRejected) as exc:
        raise FhirError(409, str(exc), code="conflict") from None
    return jsonify({"id": raw_id, "ack_code": reply.code,
                    "ack": reply.ack.decode("utf-8", "replace") if reply.ack else None})


@hl7v2.post("/hl7v2/messages/reprocess-failed")
def reprocess_failed():
    done = messages.reprocess_failed(g.repository, current_app.config["SETTINGS"].max_document_bytes)
    return jsonify({"reprocessed": [{"id": raw_id, "ack_code": code} for raw_id, code in done]})

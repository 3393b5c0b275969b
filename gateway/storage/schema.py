"""Database tables (SQLAlchemy Core). The Alembic migrations create exactly these.

Resources are kept as the JSON text validated on write; searches run on the index tables,
never on the JSON, so the same queries work on SQLite and PostgreSQL.
"""
from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    false,
    text,
)

metadata = MetaData()

# The ids that grow with every input and access: 64-bit (migration 0021). SQLite's INTEGER PRIMARY
# KEY is its 64-bit rowid already; BIGINT there would be a column of its own, not numbered.
SERIAL_ID = BigInteger().with_variant(Integer(), "sqlite")
MAX_ID = 2**63 - 1   # a larger number names no row, and neither database takes it as a parameter
MAX_VERSION = 2**31 - 1   # a resource's version: a 32-bit integer on PostgreSQL

# Every inbound message or document, stored as received before anything else is done with it.
raw_inputs = Table(
    "raw_inputs",
    metadata,
    Column("id", SERIAL_ID, primary_key=True, autoincrement=True),
    Column("received_at", String(32), nullable=False),
    Column("channel", String(32), nullable=False),
    Column("content_type", String(128)),
    Column("sender", String(256)),
    # Who submitted it, as AccessContext.serialized writes them: a document is reprocessed with their rights.
    Column("requester", Text),
    # The body is kept in blobs under its SHA-256: a row that changes status is not rewritten with it,
    # and a document that arrives raw is stored once for the raw copy and its Binary.
    Column("sha256", String(64), nullable=False),
    Column("size", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("outcome", Text),
    Column("resources", Text),
    # A JSON list of `system|value`: the patient an input names, when no record of theirs was known as
    # it was refused or stored nothing (services.ingest.NamedPatient). Operators read the outcome,
    # and no patient data: these are not in it.
    Column("patient_identifiers", Text),
    # HL7v2 only: a message is a retransmission when sender, control id and fingerprint match.
    Column("control_id", String(199)),
    Column("fingerprint", String(64)),
    Column("message_type", String(32)),
    Column("ack", Text),
    # An operator's listing of one status, newest first, walks it (migration 0022).
    Index("ix_raw_inputs_status_id", "status", "id"),
    Index("ix_raw_inputs_control", "sender", "control_id"),
    # A document sent again is matched to its earlier copy by its bytes; erasure finds a blob's readers.
    Index("ix_raw_inputs_sha256", "sha256"),
)

# Document bytes, once per content hash, outside the resource JSON. A blob's bytes are its row's
# data followed by its parts: the drivers copy a value twice while they insert it, so a value over
# BLOB_PART bytes is written a part at a time instead of as one 20 MB value. A document an HL7v2
# message carried in base64 is read from that message's raw copy instead (its data empty): the
# base64_length characters at base64_at of the blob base64_of (migration 0037).
BLOB_PART = 1024 * 1024
blobs = Table(
    "blobs",
    metadata,
    Column("sha256", String(64), primary_key=True),
    Column("size", Integer, nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("base64_of", String(64)),
    Column("base64_at", Integer),
    Column("base64_length", Integer),
    # A record's destruction asks which documents are still read from a raw copy it deletes.
    Index("ix_blobs_base64_of", "base64_of", sqlite_where=text("base64_of IS NOT NULL"),
          postgresql_where=text("base64_of IS NOT NULL")),
)
blob_parts = Table(
    "blob_parts",
    metadata,
    Column("sha256", String(64), primary_key=True),
    Column("part", Integer, primary_key=True),
    Column("data", LargeBinary, nullable=False),
)

# Current version of each resource.
resources = Table(
    "resources",
    metadata,
    Column("res_type", String(64), nullable=False),
    Column("res_id", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("last_updated", String(32), nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("patient_id", String(64)),
    Column("blob_sha256", String(64)),
    Column("body", Text, nullable=False),
    # Who may see a document (from its securityLabel; a Binary carries its DocumentReference's),
    # kept as columns so the access filter is part of every query's SQL.
    Column("masked", Boolean, nullable=False, default=False, server_default=false()),
    Column("hidden_from_patient", Boolean, nullable=False, default=False, server_default=false()),
    Column("hidden_from_representatives", Boolean, nullable=False, default=False, server_default=false()),
    Column("authors", String(512)),  # " idnatps idnatps ": the authors still see a masked document
    # A MASQUE_PS the patient or their representative set (or a document it replaces carried): only
    # they lift it (migration 0030).
    Column("masked_by_patient", Boolean, nullable=False, default=False, server_default=false()),
    # How the current version was written (POST, PUT, PATCH, DELETE), for the history.
    Column("method", String(8), nullable=False, server_default="POST"),
    PrimaryKeyConstraint("res_type", "res_id"),
    Index("ix_resources_type_updated", "res_type", "last_updated", "res_id"),
    # A patient's rows with what the access filter and a page read of them (migration 0010).
    Index("ix_resources_patient_rows", "patient_id", "res_type", "last_updated", "res_id", "deleted", "masked",
          "hidden_from_patient", "hidden_from_representatives", "authors"),
    # The Binaries that read a blob, which a record's destruction asks of each of its blobs (migration 0026).
    Index("ix_resources_blob", "blob_sha256", sqlite_where=text("blob_sha256 IS NOT NULL"),
          postgresql_where=text("blob_sha256 IS NOT NULL")),
)

# The versions a later one replaced (history, vread): a resource's current version is in
# `resources` only, so a new resource is written once (migration 0014).
resource_versions = Table(
    "resource_versions",
    metadata,
    Column("res_type", String(64), nullable=False),
    Column("res_id", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("last_updated", String(32), nullable=False),
    Column("method", String(8), nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("body", Text, nullable=False),
    PrimaryKeyConstraint("res_type", "res_id", "version"),
    Index("ix_versions_updated", "res_type", "last_updated"),
)

# Business identifiers that must stay unique per type (INS, IdNatPs, FINESS, document unique id).
# The primary key makes two concurrent writers of the same identifier collide instead of duplicating.
unique_identifiers = Table(
    "unique_identifiers",
    metadata,
    Column("res_type", String(64), nullable=False),
    Column("system", String(256), nullable=False),
    Column("value", String(256), nullable=False),
    Column("res_id", String(64), nullable=False),
    PrimaryKeyConstraint("res_type", "system", "value"),
)

# Parents named by identifier only: a document replaces (relatesTo) one this gateway has not
# registered. A parent that arrives afterwards is found here, and registered superseded.
awaited_parents = Table(
    "awaited_parents",
    metadata,
    Column("system", String(256), nullable=False),
    Column("value", String(256), nullable=False),
    Column("res_type", String(64), nullable=False),   # the replacement, so that erasure finds its rows
    Column("res_id", String(64), nullable=False),
    PrimaryKeyConstraint("system", "value", "res_type", "res_id"),
)

search_token = Table(
    "search_token",
    metadata,
    Column("res_type", String(64), nullable=False),
    Column("res_id", String(64), nullable=False),
    Column("param", String(64), nullable=False),
    Column("system", String(256), nullable=False),
    Column("code", String(256), nullable=False),
    # Both indexes carry every column their searches read (migration 0013): a lookup returns ids, a
    # check on a resource's own rows compares values; neither reads a row.
    Index("ix_token_lookup", "res_type", "param", "code", "system", "res_id"),
    Index("ix_token_owner", "res_type", "res_id", "param", "code", "system"),
)

search_string = Table(
    "search_string",
    metadata,
    Column("res_type", String(64), nullable=False),
    Column("res_id", String(64), nullable=False),
    Column("param", String(64), nullable=False),
    Column("value", String(256), nullable=False),
    Column("exact", String(256), nullable=False),
    Index("ix_string_lookup", "res_type", "param", "value"),
    Index("ix_string_owner", "res_type", "res_id", "param"),
)

search_date = Table(
    "search_date",
    metadata,
    Column("res_type", String(64), nullable=False),
    Column("res_id", String(64), nullable=False),
    Column("param", String(64), nullable=False),
    Column("low", String(32), nullable=False),
    Column("high", String(32), nullable=False),
    Index("ix_date_lookup", "res_type", "param", "low", "high", "res_id"),
    Index("ix_date_owner", "res_type", "res_id", "param", "low", "high"),
)

search_reference = Table(
    "search_reference",
    metadata,
    Column("res_type", String(64), nullable=False),
    Column("res_id", String(64), nullable=False),
    Column("param", String(64), nullable=False),
    Column("target_type", String(64), nullable=False),
    Column("target_id", String(256), nullable=False),
    Index("ix_reference_lookup", "res_type", "param", "target_id", "target_type"),
    Index("ix_reference_owner", "res_type", "res_id", "param"),
)

# What each active Consent decides, one row per rule: the access filter reads these, never the JSON.
access_rules = Table(
    "access_rules",
    metadata,
    Column("consent_id", String(64), nullable=False),
    Column("patient_id", String(64), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("effect", String(8), nullable=False),          # permit | deny
    Column("actor_system", String(256), nullable=False),  # '' when the rule names no one
    Column("actor_value", String(256), nullable=False),
    # The instants (UTC, as the index strings write them) an authorisation given for a period holds
    # from and until, inclusive; NULL: unbounded.
    Column("valid_from", String(32)),
    Column("valid_until", String(32)),
    Index("ix_access_rules_patient", "patient_id", "kind", "effect", "actor_value"),
    Index("ix_access_rules_actor", "actor_value", "kind", "effect"),
    Index("ix_access_rules_consent", "consent_id"),
)

# The audit trail's hash chains: each AuditEvent's hash covers its JSON and the previous hash of its
# chain (gateway/access/audit.py).
audit_chain = Table(
    "audit_chain",
    metadata,
    Column("seq", SERIAL_ID, primary_key=True, autoincrement=True),
    Column("event_id", String(64), nullable=False),
    Column("previous_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Column("chain", Integer, nullable=False, default=0, server_default="0"),
    Index("ix_audit_chain_head", "chain", "seq"),
)

# The patient space: accounts of patients and legal representatives, the records each manages
# (a patient's own; each child of a representative), the one-time codes of sign-ins in progress,
# and the sessions of signed-in browsers with the record they have open. Codes and session ids are
# stored as SHA-256 digests, passwords as salted scrypt hashes.
patient_accounts = Table(
    "patient_accounts",
    metadata,
    Column("login", String(128), primary_key=True),
    Column("password_hash", String(256), nullable=False),
    Column("role", String(32), nullable=False),           # patient | representative
    Column("display_name", String(256), nullable=False),
    Column("contact", String(256), nullable=False),       # where one-time codes and notifications go
    Column("notify_new_documents", Boolean, nullable=False, default=True),
)

account_records = Table(
    "account_records",
    metadata,
    Column("login", String(128), primary_key=True),
    Column("patient_ins", String(32), primary_key=True),
    # The representative holds it as a protected adult's guardian (tutelle), not as a parent.
    Column("guardianship", Boolean, nullable=False, default=False, server_default=false()),
    Index("ix_account_records_patient_ins", "patient_ins"),
)

login_challenges = Table(
    "login_challenges",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("login", String(128), nullable=False),
    Column("code_sha256", String(64), nullable=False),
    Column("expires_at", String(32), nullable=False),
    Column("used", Boolean, nullable=False, default=False),
)

web_sessions = Table(
    "web_sessions",
    metadata,
    Column("id_sha256", String(64), primary_key=True),
    Column("login", String(128), nullable=False),
    Column("expires_at", String(32), nullable=False),
    Column("patient_ins", String(32)),                    # the record open in this session
    Column("record_name", String(256)),                   # its holder's name, read once when opened
    Index("ix_web_sessions_login", "login"),
)

# Sign-in attempts counted before the secret is checked, per account ("login:…") and per source
# address ("address:…"): parallel guesses cannot slip past the count.
sign_in_attempts = Table(
    "sign_in_attempts",
    metadata,
    Column("key", String(192), primary_key=True),
    Column("window_start", String(32), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("locked_until", String(32)),
)

# A patient's request that their record be destroyed: carried out by `gateway retention` once the
# record has been closed for the retention period.
destruction_requests = Table(
    "destruction_requests",
    metadata,
    Column("patient_id", String(64), primary_key=True),
    Column("requested_at", String(32), nullable=False),
    Column("requested_by", String(128), nullable=False),
    Column("due_at", String(32), nullable=False),
    Column("carried_out_at", String(32)),
)

# What a notification tells of (notifications.kind).
NEW_DOCUMENT, EMERGENCY_ACCESS = "new-document", "emergency-access"
# "A document was added to your record": one per document the patient may see, queued in the
# transaction that stored (or revealed) it; "your record was accessed in an emergency": one with the
# first emergency access of the hour. Sent by `gateway notifications` to the record's accounts.
# claimed_until keeps two senders from sending the same one.
notifications = Table(
    "notifications",
    metadata,
    Column("id", SERIAL_ID, primary_key=True, autoincrement=True),
    # What it tells of: a document added (its id), or an emergency access (its AuditEvent's id).
    Column("about_id", String(64), nullable=False, unique=True),
    Column("kind", String(24), nullable=False, server_default=NEW_DOCUMENT),   # or EMERGENCY_ACCESS
    Column("patient_id", String(64), nullable=False),
    Column("queued_at", String(32), nullable=False),
    Column("claimed_until", String(32)),
    Column("sent_at", String(32)),
    Column("recipients", Integer),
    # Recipients whose address the mail server refused for good (senders.RecipientRefused).
    Column("refused", Integer),
    Index("ix_notifications_pending", "sent_at", "id"),
)

INDEX_TABLES = (search_token, search_string, search_date, search_reference)
INDEX_TABLE_BY_KIND = {"token": search_token, "string": search_string, "date": search_date,
                       "reference": search_reference}

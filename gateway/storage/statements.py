"""The statements every write runs, built once.

Building a SQLAlchemy statement per call (select(...).where(...)) and deriving its cache key cost
about 0.2 ms each, more than running it: an ADT ran some sixty of them. Built once, with bound
parameters named `key_*` (never a column's name, so an UPDATE takes its SET clause from the other
parameters), each costs a quarter of that.
"""
from __future__ import annotations

from sqlalchemy import bindparam, delete, insert, select, update

from .schema import (
    INDEX_TABLE_BY_KIND,
    INDEX_TABLES,
    blobs,
    raw_inputs,
    resource_versions,
    resources,
    search_reference,
    unique_identifiers,
)


def _keyed(table):
    return (table.c.res_type == bindparam("key_type")) & (table.c.res_id == bindparam("key_id"))


CURRENT = select(resources).where(_keyed(resources))
PREVIOUS = select(resources.c.version, resources.c.blob_sha256).where(_keyed(resources))
INSERT_RESOURCE = insert(resources)
UPDATE_RESOURCE = update(resources).where(_keyed(resources))
INSERT_VERSION = insert(resource_versions)
INSERT_INDEX = {kind: insert(table) for kind, table in INDEX_TABLE_BY_KIND.items()}
DELETE_INDEX = tuple(delete(table).where(_keyed(table)) for table in INDEX_TABLES)

FIND_IDENTIFIER = select(unique_identifiers.c.res_id).where(
    unique_identifiers.c.res_type == bindparam("key_type"), unique_identifiers.c.system == bindparam("key_system"),
    unique_identifiers.c.value == bindparam("key_value"))
INSERT_IDENTIFIER = insert(unique_identifiers)

BLOB_EXISTS = select(blobs.c.sha256).where(blobs.c.sha256 == bindparam("key_sha256"))
INSERT_BLOB = insert(blobs)

# The signatures (DocumentReferences related by "signs") that name a document.
SIGNATURES_OF = select(resources.c.res_id, resources.c.body).where(
    resources.c.res_type == "DocumentReference", resources.c.res_id.in_(
        select(search_reference.c.res_id).where(
            search_reference.c.res_type == "DocumentReference", search_reference.c.param == "relatesto",
            search_reference.c.target_id == bindparam("key_id"))))

INSERT_RAW = insert(raw_inputs)
CLAIM_RAW = update(raw_inputs).where(raw_inputs.c.id == bindparam("key_raw"),
                                     raw_inputs.c.status.in_(("received", "failed"))).values(status="processing")
UPDATE_RAW = update(raw_inputs).where(raw_inputs.c.id == bindparam("key_raw"))

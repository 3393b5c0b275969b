"""A FHIR document's Binary takes the labels and authors of its DocumentReference.

A FHIR document (a Bundle of type document) is kept in a Binary read at Bundle/[id], and its
DocumentReference names it by that URL, which the code that labels a document's Binaries did not
recognise until this revision: such a Binary was stored without its document's labels, and a patient
could read at Bundle/[id] a document kept from them. The DocumentReferences that name a Bundle are
found by their JSON, in one pass over the documents' rows.

Revision ID: 0015
Revises: 0014
"""
import json

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

LABELS = ("masked", "hidden_from_patient", "hidden_from_representatives", "authors")
resources = sa.table("resources", sa.column("res_type"), sa.column("res_id"), sa.column("body"),
                     *(sa.column(name) for name in LABELS))


def upgrade() -> None:
    conn = op.get_bind()
    documents = conn.execute(sa.select(resources.c.body, *(resources.c[name] for name in LABELS)).where(
        resources.c.res_type == "DocumentReference", resources.c.body.like("%Bundle/%"))).all()
    for document in documents:
        urls = [c.get("attachment", {}).get("url", "") for c in json.loads(document.body).get("content", [])]
        binaries = [url.rsplit("/", 1)[-1] for url in urls if "/Bundle/" in url or url.startswith("Bundle/")]
        if binaries:
            conn.execute(sa.update(resources).where(resources.c.res_type == "Binary", resources.c.res_id.in_(binaries))
                         .values(**{name: getattr(document, name) for name in LABELS}))


def downgrade() -> None:
    # The labels stay: taking them off would show these documents again to those they are kept from.
    pass

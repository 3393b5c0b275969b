"""A Binary carries the authors of the DocumentReference that points to it, so the author of a
masked document reads its content as well as its metadata.

Revision ID: 0006
Revises: 0005
"""
import json

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

resources = sa.table("resources", sa.column("res_type"), sa.column("res_id"), sa.column("body"),
                     sa.column("authors"))


def upgrade() -> None:
    conn = op.get_bind()
    documents = conn.execute(sa.select(resources.c.body, resources.c.authors).where(
        resources.c.res_type == "DocumentReference", resources.c.authors.is_not(None))).all()
    for body, authors in documents:
        urls = [c.get("attachment", {}).get("url", "") for c in json.loads(body).get("content", [])]
        binaries = [url.rsplit("/", 1)[-1] for url in urls if "/Binary/" in url or url.startswith("Binary/")]
        if binaries:
            conn.execute(sa.update(resources).where(resources.c.res_type == "Binary", resources.c.res_id.in_(binaries))
                         .values(authors=authors))


def downgrade() -> None:
    op.execute(sa.update(resources).where(resources.c.res_type == "Binary").values(authors=None))

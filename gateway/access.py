"""Who is asking. The repository is built from an AccessContext for every request, so the rules
it carries apply to every read path (search, read, vread, history, _include, Binary, counts).
"""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import ColumnElement, Table, true


@dataclass(frozen=True)
class AccessContext:
    """The reader or writer of one request.

    Until authentication is in place everyone who reaches the API is `anyone` and may read and
    write; the access rules become conditions returned by `resource_filter`, applied inside the
    SQL of every query the repository runs.
    """

    role: str = "anyone"
    subject: str | None = None
    address: str | None = None

    def resource_filter(self, resources: Table, res_type: str) -> ColumnElement[bool]:
        return true()

    @classmethod
    def anyone(cls, address: str | None = None) -> "AccessContext":
        return cls(address=address)

    @classmethod
    def system(cls, name: str = "gateway") -> "AccessContext":
        return cls(role="system", subject=name)

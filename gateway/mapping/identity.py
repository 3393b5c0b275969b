"""National identifiers: INS (NIR/NIA and test OIDs) with its key, IdNatPs/RPPS, IdNatSt/FINESS."""
from __future__ import annotations

from stdnum.exceptions import ValidationError
from stdnum.fr import nir

from gateway.refusal import Refused
from gateway.cda.header import II

from . import codes


def ins_of(ids: list[II]) -> II | None:
    for ii in ids:
        if ii.root in codes.INS_OIDS:
            return ii
    return None


def check_ins(ii: II, location: str) -> str:
    """Return the INS if its 15 characters and key are right, else refuse naming the element."""
    value = (ii.extension or "").replace(" ", "")
    try:
        return nir.validate(value)
    except ValidationError as exc:
        raise Refused(
            f"the INS is not valid ({exc.message}); the key is 97 - (first 13 digits mod 97)",
            location=location,
        ) from None


def ins_key_is_valid(value: str) -> bool:
    return nir.is_valid(value)

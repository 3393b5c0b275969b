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


def compact_ins(value: str) -> str:
    """An INS as it is stored and matched on: without the spaces or dots it is printed with, in
    groups ("1 85 06 75 112 045 54"), as its key is checked (python-stdnum's `nir`)."""
    return nir.compact(value)


def identifier_value(system: str, value: str | None) -> str | None:
    """The value a patient's identifier is stored and matched on: an INS compacted, any other as
    written. `system`: an OID or its `urn:oid:` URI. None, an id without extension (a refused
    input's, read as it was sent), stays None."""
    return compact_ins(value) if value is not None and system.removeprefix("urn:oid:") in codes.INS_OIDS else value


def check_ins(ii: II, location: str) -> str:
    """Return the INS if its 15 characters and key are right, else refuse naming the element."""
    try:
        return nir.validate(ii.extension or "")   # compacted as compact_ins reads it
    except ValidationError as exc:
        raise Refused(
            f"the INS is not valid ({exc.message}); the key is 97 - (first 13 digits mod 97)",
            location=location,
        ) from None


def ins_key_is_valid(value: str) -> bool:
    return nir.is_valid(value)


def contradicted_traits(registered: dict, stated: dict) -> list[str]:
    """The identity traits an input states for a patient (a FHIR Patient's `gender`, `birthDate`)
    that contradict those registered under the same identifier: "sex", "birth date". A trait one
    of them leaves unsaid, or unknown, contradicts nothing; dates are compared to the precision
    both give (1985 and 1985-06-12 agree). Names are not compared: a birth name and a used one, a
    list of given names and the first, are spelt differently by right."""
    contradicted = []
    sexes = {registered.get("gender"), stated.get("gender")}
    if sexes <= {"male", "female"} and len(sexes) == 2:
        contradicted.append("sex")
    born, said = str(registered.get("birthDate") or ""), str(stated.get("birthDate") or "")
    precision = min(len(born), len(said))
    if precision and born[:precision] != said[:precision]:
        contradicted.append("birth date")
    return contradicted

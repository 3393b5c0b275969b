"""The CI-SIS value sets the DMP metadata are checked against, read from the ANS files beside this
module (IHE SVS, as the ANS publishes them in TestContenuCDA-3-0 `jeuxDeValeurs/`):

- JDV_J07 XdsTypeCode-CISIS: the document types accepted, with their display;
- JDV_J01 author specialty, J02 healthcare facility type, J04 practice setting, J08 confidentiality;
- document_classes.csv: the class (TRE_A03) of each type, after ASS_X04, each with its source.

Updating a value set is replacing its file with the newer ANS one.
"""
from __future__ import annotations

import csv
import functools
from pathlib import Path

from lxml import etree

from gateway.cda.parser import safe_parser

HERE = Path(__file__).resolve().parent
SVS = "{urn:ihe:iti:svs:2008}"
FILES = {
    "J01": "JDV_J01_XdsAuthorSpecialty_CISIS.xml",
    "J02": "JDV_J02_XdsHealthcareFacilityTypeCode_CISIS.xml",
    "J04": "JDV_J04_XdsPracticeSettingCode_CISIS.xml",
    "J07": "JDV_J07_XdsTypeCode_CISIS.xml",
    "J08": "JDV_J08_XdsConfidentialityCode_CISIS.xml",
}


@functools.cache
def concepts(name: str) -> dict[tuple[str, str], str]:
    """{(code system OID, code): display} of one value set."""
    parser = safe_parser()
    root = etree.parse(str(HERE / FILES[name]), parser).getroot()
    return {(c.get("codeSystem"), c.get("code")): c.get("displayName") for c in root.iter(f"{SVS}Concept")}


def display(name: str, system: str | None, code: str) -> str | None:
    """The value set's display of a code, None when the code is not in it (any system matches
    when the document gives none)."""
    found = concepts(name)
    if system:
        return found.get((system, code))
    return next((d for (_, c), d in found.items() if c == code), None)


@functools.cache
def document_classes() -> dict[str, tuple[str, str]]:
    """{type code: (class code, source of the association)} for every type of JDV_J07."""
    with open(HERE / "document_classes.csv", encoding="utf-8") as f:
        rows = csv.DictReader(line for line in f if not line.startswith("#"))
        return {row["code"]: (row["class"], row["source"]) for row in rows}

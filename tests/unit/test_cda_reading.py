"""Parsing and header extraction on our samples and on hostile inputs."""
import base64
from pathlib import Path

import pytest

from conftest import CORPUS, sample
from gateway.refusal import Refused
from gateway.cda import parser
from gateway.cda.header import extract_header
from gateway.cda.parser import parse_cda
from gateway.services.documents import read_cda

LIMIT = 5 * 1024 * 1024


def header_of(data: bytes):
    root, wrapped = parse_cda(data, max_bytes=LIMIT)
    return extract_header(root, wrapped_in_xslt=wrapped)


def test_discharge_letter_header():
    h = header_of(sample("ldl-ses-martin.xml"))
    assert h.unique_id.root == "1.2.250.1.213.1.1.9.2.1.1" and h.unique_id.extension is None
    assert h.code.code == "11490-0"
    assert h.set_id.root == "1.2.250.1.213.1.1.9.2.1"
    assert h.effective_time == "20260310163000+0100"
    assert [ii.extension for ii in h.patient.ids] == ["185067511204554", "900000001"]
    birth, used = h.patient.names
    assert (birth.use, birth.family, birth.given, birth.given_list) == ("official", ["MARTIN"], ["PAUL"], "PAUL ANDRE")
    assert (used.use, used.family) == ("usual", ["MARTIN"])
    assert h.patient.birthplace_code == "75112"
    assert h.authors[0].ids[0].extension == "899900000012"
    assert h.authors[0].specialty.code == "G15_10/SM27"
    assert h.custodian.ids[0].extension == "1990000018"
    assert h.facility_type.code == "SA01"
    assert h.service_events[0].practice_setting.code == "ETABLISSEMENT"
    assert h.body.level == "N3"


def test_n1_pdf_body():
    h = header_of(sample("cr-operatoire-garnier.xml"))
    assert (h.body.level, h.body.media_type) == ("N1", "application/pdf")
    assert h.service_events[0].codes[0].code == "NEKA020"


def test_replacement_names_its_parent():
    h = header_of(sample("cr-imagerie-irm-lefevre-v2.xml"))
    assert [ii.root for ii in h.replaced] == ["1.2.250.1.213.1.1.9.2.4.1"]


def test_no_declaration_and_stylesheet_instruction_are_accepted():
    data = sample("ldl-ses-martin.xml").split(b"\n", 1)[1]
    data = b'<?xml-stylesheet type="text/xsl" href="cda.xsl"?>\n<!-- comment -->\n' + data
    assert header_of(data).code.code == "11490-0"


def test_cda_wrapped_in_an_xslt_stylesheet():
    inner = sample("ldl-ses-martin.xml").split(b"\n", 1)[1]
    data = (b'<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">'
            b'<xsl:template match="/"><xsl:copy-of select="."/></xsl:template>' + inner + b"</xsl:stylesheet>")
    h = header_of(data)
    assert h.wrapped_in_xslt and h.code.code == "11490-0"


@pytest.mark.parametrize("name, status, location, words", [
    ("bad-ins-key.xml", 422, "/ClinicalDocument/recordTarget/patientRole/id[@root='1.2.250.1.213.1.4.10']", "INS"),
    ("missing-author.xml", 422, "/ClinicalDocument/author", "author"),
    ("type-outside-dmp.xml", 422, "/ClinicalDocument/code/@code", "18842-5"),
    ("not-a-clinical-document.xml", 422, "/section", "ClinicalDocument"),
    ("unparseable.xml", 400, "/", "unparseable"),
    ("external-entity.xml", 400, "/", "entities"),
])
def test_invalid_samples_are_refused_with_location_and_reason(name, status, location, words):
    with pytest.raises(Refused) as refused:
        read_cda(sample(name), LIMIT)
    assert (refused.value.status, refused.value.location) == (status, location)
    assert words in refused.value.reason


def test_too_large_is_refused_before_parsing():
    with pytest.raises(Refused) as refused:
        read_cda(b"<a/>" * 1000, 100)
    assert refused.value.status == 413


def test_entities_are_never_expanded_even_without_doctype_keyword_case():
    billion = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><x>&b;</x>'
    with pytest.raises(Refused):
        read_cda(billion, LIMIT)


@pytest.fixture(params=["whole texts", "short texts"])
def header_reading(request, monkeypatch):
    """The two ways a document is read for its header: built whole, or (above LARGE_DOCUMENT, here
    every document) with its long texts cut."""
    if request.param == "short texts":
        monkeypatch.setattr(parser, "LARGE_DOCUMENT", 0)
    return lambda data: parse_cda(data, max_bytes=10 ** 7, whole_texts=request.param == "whole texts")


def test_document_type_declarations_are_refused_wherever_they_stand_and_in_any_encoding(header_reading):
    """The refusal rests on the parser's view of the document, not on a byte prefix."""
    base = sample("ldl-ses-martin.xml")
    body = base.decode().split("?>", 1)[1]
    late = base.replace(b"<ClinicalDocument", b"<!--" + b"x" * 5000 + b"-->\n<!DOCTYPE ClinicalDocument>\n<ClinicalDocument", 1)
    utf16 = ('<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE ClinicalDocument [<!ENTITY e "x">]>' + body).encode("utf-16")
    utf16_plain = ('<?xml version="1.0" encoding="UTF-16"?>' + body).encode("utf-16")
    external = (Path(__file__).parents[2] / "samples" / "invalid" / "external-entity.xml").read_bytes()
    for refused in (late, utf16, external):
        with pytest.raises(Refused) as caught:
            header_reading(refused)
        assert caught.value.status == 400 and caught.value.code == "security"
    root, _ = header_reading(utf16_plain)
    assert root.tag == "{urn:hl7-org:v3}ClinicalDocument"


def test_a_large_document_is_read_for_the_same_header_with_its_long_texts_cut(monkeypatch):
    """Every sample and corpus document (when the corpus is beside the clone), and an N1 document
    with a 3 MB PDF, give the same header (or the same refusal) both ways."""
    root = Path(__file__).parents[2]
    corpus = sorted((CORPUS / "cda").glob("*.xml"))
    documents = {path.name: path.read_bytes() for path in [*sorted((root / "samples").rglob("*.xml")), *corpus]}
    n1 = sample("cr-hospitalisation-lefevre.xml")
    start = n1.index(b'representation="B64">') + len(b'representation="B64">')
    pdf = base64.b64encode(b"%PDF-1.4\n" + bytes(range(256)) * 9000)
    documents["large N1"] = n1[:start] + pdf + n1[n1.index(b"</text>", start):]

    def header(data: bytes, whole: bool) -> str:
        try:
            found, wrapped = parse_cda(data, max_bytes=10 ** 7, whole_texts=whole)
            return repr(extract_header(found, wrapped_in_xslt=wrapped))
        except Refused as refusal:
            return f"{refusal.status} {refusal.code} {refusal.location}"

    monkeypatch.setattr(parser, "LARGE_DOCUMENT", 0)
    assert len(documents) > (20 if corpus else 10) and len(pdf) > 3 * parser.TEXT_KEPT * 10
    for name, data in documents.items():
        assert header(data, True) == header(data, False), name
    found, _ = parse_cda(documents["large N1"], max_bytes=10 ** 7, whole_texts=False)
    text = found.find("{urn:hl7-org:v3}component/{urn:hl7-org:v3}nonXMLBody/{urn:hl7-org:v3}text")
    assert len(text.text) == parser.TEXT_KEPT and text.get("mediaType") == "application/pdf"

"""FHIR XML written from JSON and read into it: checked against fhir.resources' own writer and reader
on resources written by others (the ANS and IHE examples, the third-party corpus), on strings that
need escaping, and on XML that is not FHIR's form of a resource."""
import binascii
import datetime
import decimal
import functools
import json
from pathlib import Path

import pytest
from fhir.resources.R4B import get_fhir_model_class
from hypothesis import given, settings, strategies as st
from lxml import etree

from conftest import CORPUS, ROOT
from gateway import base64text
from gateway.fhir import formats, xml_writer
from gateway.refusal import Refused

SHARED = ROOT.parent / "shared"
# The official packages' resources and examples (but their 333 StructureDefinitions, which take the
# library seconds each), the ANS guide's examples, the third-party corpus.
EXAMPLES = [(SHARED / "fhir-definitions", "*/package/**/*.json"),
            (SHARED / "reference" / "pdsm4dmp" / "input" / "examples", "*.json"),
            (CORPUS / "fhir", "*.json")]
LEFT_OUT = ("StructureDefinition", "ImplementationGuide")


@functools.lru_cache(maxsize=None)
def written_by_others() -> tuple[Path, ...]:
    """Every FHIR JSON resource there that the library's model reads (the rest are the corpus's
    invalid ones, which nothing serves)."""
    found = []
    for folder, pattern in EXAMPLES:
        for path in sorted(folder.glob(pattern)) if folder.is_dir() else []:
            try:
                resource = json.loads(path.read_text(encoding="utf-8"))
                if resource["resourceType"] in LEFT_OUT:
                    continue
                get_fhir_model_class(resource["resourceType"]).model_validate(resource)
            except Exception:
                continue
            found.append(path)
    return tuple(found)


def library_xml(resource: dict) -> bytes:
    """What fhir.resources writes (the gateway's XML before xml_writer)."""
    return get_fhir_model_class(resource["resourceType"]).model_validate(resource).model_dump_xml()


def same_value(ours: str, library: str) -> bool:
    """The library writes some values again from what it parsed: an instant's fraction of a second,
    a decimal given as an integer, a base64Binary's padding bits. The same value is then written
    another way (ours as the JSON has it)."""
    if ours == library:
        return True
    for read in (lambda v: datetime.datetime.fromisoformat(v.replace("Z", "+00:00")), decimal.Decimal,
                 base64text.decode):
        try:
            return read(ours) == read(library)
        except (ValueError, binascii.Error, decimal.InvalidOperation):
            continue
    return False


def differences(ours, library, path="") -> list[str]:
    path += "/" + etree.QName(ours).localname
    if ours.tag != library.tag:
        return [f"{path}: {ours.tag} where the library has {library.tag}"]
    found = []
    # A datatype's or backbone element's id is an attribute in FHIR's XML: the library leaves it out,
    # or writes it as an element.
    theirs = list(library)
    if ("id" in ours.attrib and theirs and etree.QName(theirs[0]).localname == "id"
            and theirs[0].get("value") == ours.get("id")):
        theirs = theirs[1:]
    if set(ours.attrib) - set(library.attrib) - {"id"} or set(library.attrib) - set(ours.attrib):
        found.append(f"{path}: attributes {sorted(ours.attrib)} against {sorted(library.attrib)}")
    found += [f"{path}@{name}: {ours.get(name)!r} against {library.get(name)!r}"
              for name in library.attrib if name in ours.attrib and not same_value(ours.get(name), library.get(name))]
    if (ours.text or "").strip() != (library.text or "").strip():
        found.append(f"{path}: text")
    if [c.tag for c in ours] != [c.tag for c in theirs]:
        return found + [f"{path}: children {[etree.QName(c).localname for c in ours]} against "
                        f"{[etree.QName(c).localname for c in theirs]}"]
    for mine, their in zip(ours, theirs):
        found += differences(mine, their, path)
    return found


def canonical(value, datatype_ids=True):
    """A resource with its narrative in canonical XML (the same XHTML may be written with other
    characters), and without datatypes' ids if asked."""
    if isinstance(value, list):
        return [canonical(v, datatype_ids) for v in value]
    if isinstance(value, dict):
        return {k: etree.tostring(etree.fromstring(v), method="c14n") if k == "div" else canonical(v, datatype_ids)
                for k, v in value.items() if datatype_ids or k != "id" or "resourceType" in value}
    return value


def as_library_reads(resource: dict) -> dict:
    return json.loads(get_fhir_model_class(resource["resourceType"]).model_validate(resource)
                      .model_dump_json(exclude_none=True, by_alias=True))


def library_reads_xml(body: bytes) -> dict:
    root = etree.fromstring(body)
    return json.loads(get_fhir_model_class(etree.QName(root).localname).model_validate_xml(body)
                      .model_dump_json(exclude_none=True, by_alias=True))


@pytest.mark.skipif(not written_by_others(), reason="../shared is not beside the repository")
def test_the_examples_and_corpus_are_written_and_read_as_fhir_resources_does():
    paths = written_by_others()
    assert len(paths) > 150
    checked = 0
    for path in paths:
        resource = json.loads(path.read_text(encoding="utf-8"))
        ours = xml_writer.to_xml(resource)
        assert differences(etree.fromstring(ours), etree.fromstring(library_xml(resource))) == [], path.name
        if path.name == "r4val_NEG_DocumentReference-empty-array.json":
            # A category with an empty coding list: written, an empty element, which FHIR's XML forbids.
            with pytest.raises(Refused, match="DocumentReference.category"):
                formats.from_xml(ours)
            continue
        # Read back: the very resource; and what the library's XML reader reads there, but for the
        # datatypes' ids it does not read.
        read = formats.from_xml(ours)
        assert canonical(read) == canonical(resource), path.name
        assert canonical(as_library_reads(read), False) == canonical(library_reads_xml(ours), False), path.name
        checked += 1
    assert checked == len(paths) - 1


def test_a_datatype_id_and_an_extension_url_are_attributes_a_resource_id_an_element():
    patient = {"resourceType": "Patient", "id": "p1",
               "name": [{"id": "n1", "family": "MARTIN", "_family": {"id": "f1", "extension": [
                   {"url": "http://example.org/x", "valueString": "y"}]}}],
               "contained": [{"resourceType": "Organization", "id": "o1", "name": "A"}]}
    root = etree.fromstring(xml_writer.to_xml(patient))
    ns = {"f": "http://hl7.org/fhir"}
    assert root.find("f:id", ns).get("value") == "p1"
    name = root.find("f:name", ns)
    assert name.get("id") == "n1" and name.find("f:id", ns) is None
    family = name.find("f:family", ns)
    assert (family.get("id"), family.get("value")) == ("f1", "MARTIN")
    assert family.find("f:extension", ns).get("url") == "http://example.org/x"
    assert root.find("f:contained/f:Organization/f:id", ns).get("value") == "o1"


def test_repeated_primitives_keep_their_extensions_in_place():
    patient = {"resourceType": "Patient", "name": [{"given": ["A", None, "C"], "_given": [
        None, {"extension": [{"url": "http://example.org/absent", "valueCode": "unknown"}]}, None]}]}
    written = etree.fromstring(xml_writer.to_xml(patient))
    given_ = written.findall("{http://hl7.org/fhir}name/{http://hl7.org/fhir}given")
    assert [g.get("value") for g in given_] == ["A", None, "C"]
    assert given_[1][0].get("url") == "http://example.org/absent"


def test_an_element_the_type_does_not_have_is_not_dropped_silently():
    with pytest.raises(xml_writer.NotWritable):
        xml_writer.to_xml({"resourceType": "Patient", "nickname": "x"})
    with pytest.raises(xml_writer.NotWritable):
        xml_writer.to_xml({"resourceType": "Bundle", "type": "collection",
                           "entry": [{"resource": {"resourceType": "Coding"}}]})


def test_numbers_are_written_as_the_json_answer_writes_them():
    observation = {"resourceType": "Observation", "status": "final", "code": {"text": "t"},
                   "valueQuantity": {"value": 0.1, "unit": "mg"}, "component": [
                       {"code": {"text": "n"}, "valueInteger": 12}, {"code": {"text": "b"}, "valueBoolean": False}]}
    text = xml_writer.to_xml(observation).decode()
    assert '<value value="0.1"/>' in text and '<valueInteger value="12"/>' in text
    assert '<valueBoolean value="false"/>' in text


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40), st.text(max_size=40))
def test_any_string_is_escaped_and_read_back(family, text):
    patient = {"resourceType": "Patient", "name": [{"family": family, "text": text}]}
    root = etree.fromstring(xml_writer.to_xml(patient), etree.XMLParser(resolve_entities=False))
    name = root.find("{http://hl7.org/fhir}name")
    readable = [xml_writer.NOT_XML.sub("\ufffd", value) for value in (family, text)]
    written = [name.find("{http://hl7.org/fhir}family"), name.find("{http://hl7.org/fhir}text")]
    assert [w.get("value") for w in written] == readable


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40), st.text(max_size=40))
def test_any_string_is_read_back_as_written(family, text):
    patient = {"resourceType": "Patient", "name": [{"family": family, "text": text}]}
    name = formats.from_xml(xml_writer.to_xml(patient))["name"][0]
    assert [name["family"], name["text"]] == [xml_writer.NOT_XML.sub("\ufffd", v) for v in (family, text)]


PATIENT = ('<Patient xmlns="http://hl7.org/fhir"><!-- a comment --><id value="p1"/>'
           '<name id="n1"><family id="f1" value="MARTIN"><extension url="http://example.org/x">'
           '<valueString value="y"/></extension></family><given value="A"/>'
           '<given><extension url="http://example.org/absent"><valueCode value="unknown"/></extension></given>'
           '</name><active value="true"/><multipleBirthInteger value="2"/></Patient>')


def test_a_datatype_id_a_primitive_s_extensions_and_typed_values_are_read():
    assert formats.load(PATIENT.encode(), "application/fhir+xml") == {
        "resourceType": "Patient", "id": "p1", "active": True, "multipleBirthInteger": 2,
        "name": [{"id": "n1", "family": "MARTIN", "_family": {"id": "f1", "extension": [
            {"url": "http://example.org/x", "valueString": "y"}]},
            "given": ["A", None], "_given": [None, {"extension": [
                {"url": "http://example.org/absent", "valueCode": "unknown"}]}]}]}
    # fhir.resources' reader, which the gateway used before, loses the name's id.
    assert "id" not in library_reads_xml(PATIENT.replace("<!-- a comment -->", "").encode())["name"][0]


@pytest.mark.parametrize("xml, where", [
    ('<Patient xmlns="http://hl7.org/fhir"><nickname value="x"/></Patient>', "Patient.nickname"),
    ('<Patient xmlns="http://hl7.org/fhir"><name><family value="A"/><family value="B"/></name></Patient>',
     "Patient.name.family"),
    ('<Patient xmlns="http://hl7.org/fhir"><active value="yes"/></Patient>', "Patient.active"),
    ('<Patient xmlns="http://hl7.org/fhir"><multipleBirthInteger value="2.5"/></Patient>',
     "Patient.multipleBirthInteger"),
    ('<Patient xmlns="http://hl7.org/fhir"><name>MARTIN</name></Patient>', "Patient.name"),
    ('<Patient xmlns="http://hl7.org/fhir"><name/></Patient>', "Patient.name"),
    ('<Patient xmlns="http://hl7.org/fhir"><gender/></Patient>', "Patient.gender"),
    ('<Patient xmlns="http://hl7.org/fhir"><name><family value="A" lang="fr"/></name></Patient>',
     "Patient.name.family"),
    ('<Patient xmlns="http://hl7.org/fhir" xmlns:o="urn:other"><o:name/></Patient>', "Patient.name"),
    ('<Patient xmlns="http://hl7.org/fhir"><text><status value="generated"/><div>x</div></text></Patient>',
     "Patient.text.div"),
    ('<Patient xmlns="http://hl7.org/fhir"><contained><Coding><code value="x"/></Coding></contained></Patient>',
     "Patient.contained.Coding"),
    ('<Patient xmlns="http://hl7.org/fhir"><contained><Organization><name value="A"/></Organization>'
     '<Organization><name value="B"/></Organization></contained></Patient>', "Patient.contained"),
    ('<Bundle xmlns="http://hl7.org/fhir"><type value="collection"/><entry><resource/></entry></Bundle>',
     "Bundle.entry.resource"),
])
def test_what_is_not_fhir_s_xml_form_is_refused_and_located(xml, where):
    with pytest.raises(Refused) as refused:
        formats.load(xml.encode(), "application/fhir+xml")
    assert refused.value.status == 400
    assert refused.value.location == where, str(refused.value)


def test_a_schema_location_is_no_part_of_the_resource():
    """As the HL7 examples are written."""
    xml = ('<Patient xmlns="http://hl7.org/fhir" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
           'xsi:schemaLocation="http://hl7.org/fhir ../../schema/patient.xsd"><active value="true"/></Patient>')
    assert formats.load(xml.encode(), "application/fhir+xml") == {"resourceType": "Patient", "active": True}


def test_nesting_is_bounded_before_anything_else_reads_it():
    deep = "<extension url='http://example.org/e'>" * 60 + "<valueString value='x'/>" + "</extension>" * 60
    with pytest.raises(Refused, match="deeper"):
        formats.load(f'<Patient xmlns="http://hl7.org/fhir">{deep}</Patient>'.encode(), "application/fhir+xml")


XHTML_DIV = '<div xmlns="http://www.w3.org/1999/xhtml"><p xml:lang="fr">x<!-- note --> <b>y</b></p>z</div>'


@pytest.mark.parametrize("patient", [
    '<Patient xmlns="http://hl7.org/fhir"><text><status value="generated"/>'
    '<h:div xmlns:h="http://www.w3.org/1999/xhtml"><h:p xml:lang="fr">x<!-- note --> <h:b>y</h:b></h:p>z</h:div>'
    '</text></Patient>',
    '<f:Patient xmlns:f="http://hl7.org/fhir"><f:text><f:status value="generated"/>' + XHTML_DIV + '</f:text></f:Patient>',
    '<Patient xmlns="http://hl7.org/fhir" xmlns:x="urn:x"><text><status value="generated"/>' + XHTML_DIV
    + '</text></Patient>'], ids=["prefixed div", "prefixed fhir", "other declaration"])
def test_a_narrative_is_read_as_fhir_s_json_holds_it_whatever_its_prefixes(patient):
    """Its namespace the default one, no other declared. A prefixed div was kept prefixed, which the
    official check refuses (\"narrative must be a <div> in the XHTML namespace\"), and the FHIR XML's
    own declarations were carried into it."""
    assert formats.from_xml(patient.encode())["text"]["div"] == XHTML_DIV

"""FHIR XML written from JSON: checked against fhir.resources' own writer and reader on resources
written by others (the ANS and IHE examples, the third-party corpus), and on strings that need
escaping."""
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


def comparable(value):
    """A resource as the library reads it, but for what its XML reader does not give back as its
    JSON reader does: a datatype's id (an attribute it does not read), and the narrative's
    characters (it writes them as references: the same XHTML)."""
    if isinstance(value, list):
        return [comparable(v) for v in value]
    if isinstance(value, dict):
        return {k: etree.tostring(etree.fromstring(v), method="c14n") if k == "div" else comparable(v)
                for k, v in value.items() if k != "id" or "resourceType" in value}
    return value


@pytest.mark.skipif(not written_by_others(), reason="../shared is not beside the repository")
def test_the_examples_and_corpus_are_written_as_fhir_resources_writes_them():
    paths = written_by_others()
    assert len(paths) > 150
    checked = 0
    for path in paths:
        resource = json.loads(path.read_text(encoding="utf-8"))
        ours = xml_writer.to_xml(resource)
        assert differences(etree.fromstring(ours), etree.fromstring(library_xml(resource))) == [], path.name
        # Read back by the library's own XML reader: the same resource as it reads the JSON.
        expected = json.loads(get_fhir_model_class(resource["resourceType"]).model_validate(resource)
                              .model_dump_json(exclude_none=True, by_alias=True))
        assert comparable(formats.from_xml(ours)) == comparable(expected), path.name
        checked += 1
    assert checked == len(paths)


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

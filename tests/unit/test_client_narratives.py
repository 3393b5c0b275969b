"""A client's narrative is held to FHIR's rules for it (txt-1), in JSON and in XML alike: what the
HL7 validator's test cases refuse is refused, with its location, and every narrative written by
others (the ANS and IHE examples, the third-party corpus) is accepted."""
import json

import pytest

from gateway.fhir import formats, xml_writer
from gateway.fhir.narrative import check_narratives
from gateway.refusal import Refused
from test_fhir_xml import written_by_others


def listing(div: str) -> dict:
    return {"resourceType": "List", "status": "current", "mode": "working",
            "text": {"status": "generated", "div": div}}


def both_forms(resource: dict):
    yield json.dumps(resource).encode(), "application/fhir+json"
    yield xml_writer.to_xml(resource), "application/fhir+xml"


REFUSED = {
    # As the HL7 validator's list-xhtml-attribute, list-xhtml-element and list-xhtml-wrongns2.
    "an event attribute": '<div xmlns="http://www.w3.org/1999/xhtml"><p onClick="check">narrative</p></div>',
    "an object": '<div xmlns="http://www.w3.org/1999/xhtml"><p>narrative</p><object data="x"/></div>',
    "another namespace": '<div xmlns="http://www.w3.org/1999/xhtml"><n:p xmlns:n="http://www.w3.org/1999/xhtmlx">'
                         'narrative</n:p></div>',
    "a script": '<div xmlns="http://www.w3.org/1999/xhtml"><SCRIPT>alert(1)</SCRIPT></div>',
    "a form": '<div xmlns="http://www.w3.org/1999/xhtml"><form><input name="q"/></form></div>',
    "an iframe": '<div xmlns="http://www.w3.org/1999/xhtml"><iframe src="https://example.org"/></div>',
    "a stylesheet link": '<div xmlns="http://www.w3.org/1999/xhtml"><link rel="stylesheet" href="x.css"/></div>',
    "a javascript link": '<div xmlns="http://www.w3.org/1999/xhtml"><a href=" java\tscript:alert(1)">x</a></div>',
    "an xlink": '<div xmlns="http://www.w3.org/1999/xhtml" xmlns:xl="http://www.w3.org/1999/xlink">'
                '<a xl:href="https://example.org">x</a></div>',
}


@pytest.mark.parametrize("div", REFUSED.values(), ids=REFUSED.keys())
def test_what_would_act_when_shown_is_refused(div):
    for body, media in both_forms(listing(div)):
        with pytest.raises(Refused) as refused:
            formats.load(body, media)
        assert (refused.value.status, refused.value.location) == (422, "List.text.div"), media


def test_a_narrative_is_a_div():
    resource = listing('<p xmlns="http://www.w3.org/1999/xhtml">narrative</p>')
    with pytest.raises(Refused) as in_json:
        formats.load(json.dumps(resource).encode(), "application/fhir+json")
    assert (in_json.value.status, in_json.value.location) == (422, "List.text.div")
    with pytest.raises(Refused) as in_xml:      # in XML, the narrative element is named div
        formats.load(xml_writer.to_xml(resource), "application/fhir+xml")
    assert (in_xml.value.status, in_xml.value.location) == (400, "List.text.p")


def test_a_narrative_inside_a_bundle_is_checked_too():
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": listing('<div xmlns="http://www.w3.org/1999/xhtml">ok</div>')},
        {"resource": {"resourceType": "Patient", "contained": [
            listing('<div xmlns="http://www.w3.org/1999/xhtml"><img src="x" onerror="alert(1)"/></div>')]}}]}
    with pytest.raises(Refused) as refused:
        formats.load(json.dumps(bundle).encode(), "application/fhir+json")
    assert refused.value.location == "Bundle.entry.resource.contained.text.div"


def test_formatting_links_images_and_tables_are_accepted():
    div = ('<div xmlns="http://www.w3.org/1999/xhtml"><h3 class="t" style="color: red">Titre</h3><p>Texte '
           '<b>gras</b> <a href="https://example.org/doc">lien</a> <a name="ici"/><img src="#photo" alt="photo"/>'
           '</p><table border="1"><tr><th colspan="2">A</th></tr><tr><td>1</td><td>2</td></tr></table></div>')
    for body, media in both_forms(listing(div)):
        assert formats.load(body, media)["text"]["div"]


@pytest.mark.skipif(not written_by_others(), reason="../shared is not beside the repository")
def test_every_narrative_written_by_others_is_accepted():
    narratives = 0
    for path in written_by_others():
        resource = json.loads(path.read_text(encoding="utf-8"))
        check_narratives(resource, resource["resourceType"])
        narratives += json.dumps(resource).count('"div"')
    assert narratives > 100

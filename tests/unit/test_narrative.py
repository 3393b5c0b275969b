"""CDA bodies made readable without trusting them: only a short list of elements becomes HTML,
every text is escaped, no attribute passes but a cell's numeric span."""
import base64

from hypothesis import given
from hypothesis import strategies as st
from lxml import etree
from markupsafe import escape

from conftest import sample
from gateway.cda.narrative import readable_body
from gateway.cda.parser import parse_cda

HL7 = "urn:hl7-org:v3"


def body_of(narrative: str):
    document = etree.fromstring(
        f'<ClinicalDocument xmlns="{HL7}" xmlns:x="http://www.w3.org/1999/xhtml"><component><structuredBody>'
        f"<component><section><title>Résultats</title><text>{narrative}</text></section></component>"
        "</structuredBody></component></ClinicalDocument>".encode())
    return readable_body(document)


def test_structure_becomes_html_and_styles_become_emphasis():
    [section] = body_of('<paragraph>Fièvre <content styleCode="Bold">39,5</content></paragraph>'
                        '<list listType="ordered"><item>un</item></list>'
                        '<table><tbody><tr><td colspan="2">a</td><td rowspan="x">b</td></tr></tbody></table>').sections
    assert section.title == "Résultats"
    assert str(section.html) == ('<p>Fièvre <strong>39,5</strong></p><ol><li>un</li></ol>'
                                 '<table><tbody><tr><td colspan="2">a</td><td>b</td></tr></tbody></table>')


def test_nothing_from_the_document_can_run():
    [section] = body_of('<paragraph ID="p1" onclick="steal()">a</paragraph>'
                        '<x:script>alert(1)</x:script><x:img src="x" onerror="alert(2)"/>'
                        '<linkHtml href="javascript:alert(3)">lien</linkHtml>'
                        '<content styleCode="Bold" style="background:url(javascript:x)">&lt;script&gt;</content>').sections
    html = str(section.html)
    assert html == "<p>a</p>lien<strong>&lt;script&gt;</strong>"


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=200))
def test_any_text_comes_out_escaped(text):
    cleaned = "".join(c for c in text if c in "\t\n\r" or ord(c) >= 0x20)
    try:
        [section] = body_of(f"<paragraph>{escape(cleaned)}</paragraph>").sections
    except etree.XMLSyntaxError:
        return   # characters XML 1.0 forbids cannot reach the renderer
    assert str(section.html) == f"<p>{escape(etree.fromstring(f'<p>{escape(cleaned)}</p>').text or '')}</p>"


def test_sections_of_a_sample_report_and_an_n1_pdf():
    root, _ = parse_cda(sample("cr-biologie-martin.xml"), max_bytes=10_000_000)
    assert [s.title for s in readable_body(root).sections] == ["Hématologie", "Biochimie", "Copie du document"]
    root, _ = parse_cda(sample("cr-hospitalisation-lefevre.xml"), max_bytes=10_000_000)
    body = readable_body(root)
    assert body.media_type == "application/pdf" and body.data.startswith(b"%PDF-") and not body.sections


def test_an_n1_body_that_is_not_base64_gives_nothing_to_show():
    document = etree.fromstring(
        f'<ClinicalDocument xmlns="{HL7}"><component><nonXMLBody><text mediaType="application/pdf" '
        f'representation="B64">not*base64</text></nonXMLBody></component></ClinicalDocument>'.encode())
    assert readable_body(document).data is None
    document = etree.fromstring(
        f'<ClinicalDocument xmlns="{HL7}"><component><nonXMLBody><text mediaType="application/pdf" '
        f'representation="B64">{base64.b64encode(b"%PDF-1.4").decode()}</text></nonXMLBody></component>'
        f'</ClinicalDocument>'.encode())
    assert readable_body(document).data == b"%PDF-1.4"

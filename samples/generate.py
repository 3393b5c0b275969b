"""Write the sample documents of samples/ (run: python samples/generate.py).

Every person, establishment and identifier here is fictional; the INS are test INS
(OID 1.2.250.1.213.1.4.10) with a correct key. The documents follow the CI-SIS header
(Volet Structuration minimale) and the content models they name.
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

HERE = Path(__file__).parent
INS_TEST = "1.2.250.1.213.1.4.10"
HOSPITAL_OID = "1.2.250.1.213.1.1.9.1001"  # IPP namespace of the fictional hospital


@dataclass
class Patient:
    ins: str
    ipp: str
    birth_family: str
    given: str            # all birth first names
    first_given: str
    used_family: str
    gender: str
    birth: str
    birthplace_code: str
    birthplace_city: str


@dataclass
class Professional:
    idnatps: str
    family: str
    given: str
    specialty: tuple[str, str]
    prefix: str = "DR"


@dataclass
class Establishment:
    idnatst: str
    name: str
    facility: tuple[str, str]
    setting: tuple[str, str] = ("ETABLISSEMENT", "Etablissement de santé")


PATIENTS = {
    "martin": Patient("185067511204554", "900000001", "MARTIN", "PAUL ANDRE", "PAUL", "MARTIN", "M",
                      "19850612", "75112", "PARIS 12E ARRONDISSEMENT"),
    "lefevre": Patient("292086938701277", "900000002", "LEFEVRE", "CLAIRE HELENE", "CLAIRE", "DUBOIS", "F",
                       "19920823", "69387", "LYON 7E ARRONDISSEMENT"),
    "garnier": Patient("161023306508977", "900000003", "GARNIER", "JEAN", "JEAN", "GARNIER", "M",
                       "19610219", "33065", "BLANQUEFORT"),
    "moreau": Patient("212057501802305", "900000004", "MOREAU", "LEA", "LEA", "MOREAU", "F",
                      "20120514", "75018", "PARIS 18E ARRONDISSEMENT"),
}

CH = Establishment("1990000018", "Centre hospitalier de Saint-Aubin", ("SA01", "Etablissement public de santé"))
CLINIC = Establishment("1990000026", "Clinique du Parc", ("SA03", "Etablissement privé non PSPH"))
CABINET = Establishment("1990000034", "Cabinet d'imagerie des Tilleuls", ("SA08", "Cabinet de groupe"),
                        ("AMBULATOIRE", "Exercice en ambulatoire"))
LAB = Establishment("1990000042", "Laboratoire de biologie médicale Pasteur-Vauban", ("SA25", "Laboratoire de biologie médicale"),
                    ("AMBULATOIRE", "Exercice en ambulatoire"))

INTERNIST = Professional("899900000012", "BERNARD", "Sophie", ("G15_10/SM27", "Médecin - Médecine interne (SM)"))
SURGEON = Professional("899900000020", "ROUSSEAU", "Marc", ("G15_10/SM48", "Médecin - Chirurgie orthopédique et traumatologie (SM)"))
RADIOLOGIST = Professional("899900000038", "FAURE", "Isabelle", ("G15_10/SM44", "Médecin - Radio-diagnostic et imagerie médicale (SM)"))
BIOLOGIST = Professional("899900000046", "CHEVALIER", "Antoine", ("G15_10/SM05", "Médecin - Biologie médicale (SM)"))
GP = Professional("899900000053", "NOEL", "Camille", ("G15_10/SM54", "Médecin - Médecine générale (SM)"))


@dataclass
class Document:
    file: str
    doc_id: str
    set_id: str
    version: int
    code: tuple[str, str]
    title: str
    time: str
    patient: Patient
    author: Professional
    place: Establishment
    event_codes: list[tuple[str, str, str]] = field(default_factory=list)  # (code, system, display)
    event_low: str = ""
    event_high: str = ""
    templates: list[tuple[str, str | None]] = field(default_factory=list)
    sections: list[tuple[str, str, str]] = field(default_factory=list)  # (LOINC, title, narrative)
    model_sections: list[str] = field(default_factory=list)  # sections the content model requires, as XML
    imaging: tuple[str, ...] = ()  # CR-IMG: indication, history, technique, results, conclusion
    biology: list[tuple[str, str, str, str, str, str]] = field(default_factory=list)  # CR-BIO: see biology_sections
    pdf_lines: list[str] = field(default_factory=list)
    replaces: str | None = None
    confidentiality: str = "N"


def pdf(lines: list[str]) -> bytes:
    """A small, valid PDF 1.4 page showing the lines (Helvetica, WinAnsi)."""
    text = ["BT", "/F1 11 Tf", "50 790 Td", "14 TL"]
    for line in lines:
        safe = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        text.append(f"({safe}) Tj T*")
    text.append("ET")
    stream = "\n".join(text).encode("cp1252")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def _person(p: Professional, tag: str, org: Establishment | None, org_tag: str = "representedOrganization",
            with_setting: bool = False) -> str:
    org_xml = ""
    if org:
        setting = (f'<standardIndustryClassCode code="{org.setting[0]}" displayName="{escape(org.setting[1])}" '
                   f'codeSystem="1.2.250.1.213.1.1.4.9"/>') if with_setting else ""
        org_xml = (f'<{org_tag}><id root="1.2.250.1.71.4.2.2" extension="{org.idnatst}"/>'
                   f'<name>{escape(org.name)}</name>{setting}</{org_tag}>')
    return (f'<id root="1.2.250.1.71.4.2.1" extension="{p.idnatps}"/>'
            f'<code code="{p.specialty[0]}" displayName="{escape(p.specialty[1])}" codeSystem="1.2.250.1.213.1.1.4.5"/>'
            f'<{tag}><name><given>{escape(p.given)}</given><family>{escape(p.family)}</family>'
            f'<prefix>{p.prefix}</prefix></name></{tag}>{org_xml}')


# The address and telephone of each establishment (all fictional).
ADDRESSES = {"1990000042": ("12", "Rue Vauban", "69006", "LYON", "tel:0400000042")}


def _contactable(person_xml: str, org: Establishment) -> str:
    """A person (and their organisation) with the address and telephone CR-BIO requires."""
    number, street, postcode, city, phone = ADDRESSES[org.idnatst]
    addr = (f"<addr><houseNumber>{number}</houseNumber><streetName>{escape(street)}</streetName>"
            f"<postalCode>{postcode}</postalCode><city>{city}</city></addr>")
    contact = f'{addr}<telecom value="{phone}" use="WP"/>'
    with_person = person_xml.replace("<assignedPerson>", contact + "<assignedPerson>", 1)
    return with_person.replace("<name>" + escape(org.name) + "</name>", f"<name>{escape(org.name)}</name>"
                               f'<telecom value="{phone}" use="WP"/>{addr}', 1)


def cda(d: Document) -> bytes:
    p = d.patient
    templates = "".join(f'<templateId root="{r}"' + (f' extension="{e}"' if e else "") + "/>"
                        for r, e in [("2.16.840.1.113883.2.8.2.1", None), ("1.2.250.1.213.1.1.1.1", None)] + d.templates)
    replaces = (f'<relatedDocument typeCode="RPLC"><parentDocument><id root="{d.replaces}"/></parentDocument>'
                f'</relatedDocument>') if d.replaces else ""
    events = "".join(f'<translation code="{c}" codeSystem="{s}" displayName="{escape(n)}">'
                     + ('<qualifier><name code="121139" displayName="Modalité d\'imagerie" codeSystem="1.2.840.10008.2.16.4"/>'
                        '</qualifier>' if s == "1.2.840.10008.2.16.4" else "") + '</translation>'
                     for c, s, n in d.event_codes[1:])
    first = d.event_codes[0] if d.event_codes else None
    event_code = (f'<code code="{first[0]}" codeSystem="{first[1]}" displayName="{escape(first[2])}">{events}</code>'
                  if first else "")
    model_sections = (imaging_sections(d, *d.imaging) if d.imaging else
                      biology_sections(d) if d.biology else d.model_sections)
    if d.sections or model_sections:
        components = "".join(f"<component>{section}</component>" for section in model_sections) + "".join(
            f'<component><section><templateId root="1.3.6.1.4.1.19376.1.5.3.1.3.1"/>'
            f'<code code="{code}" codeSystem="2.16.840.1.113883.6.1"/><title>{escape(title)}</title>'
            f'<text>{text}</text></section></component>' for code, title, text in d.sections)
        body = f"<structuredBody>{components}</structuredBody>"
    else:
        data = base64.b64encode(pdf(d.pdf_lines)).decode()
        body = f'<nonXMLBody><text mediaType="application/pdf" representation="B64">{data}</text></nonXMLBody>'
    performer = _person(d.author, "assignedPerson", d.place, with_setting=True)
    lab_status, performer_template, responsible = "", "", ""
    if d.biology:
        # CR-BIO: the documented act's status, when and by whom it was done, the responsible biologist.
        lab_status = '<lab:statusCode code="completed"/>'
        performer_template = f'<templateId root="1.3.6.1.4.1.19376.1.3.3.1.7"/><time><high value="{d.time}"/></time>'
        performer = _contactable(_person(d.author, "assignedPerson", d.place, with_setting=True), d.place)
        responsible = (f'<responsibleParty><assignedEntity>{_contactable(_person(d.author, "assignedPerson", d.place), d.place)}'
                       '</assignedEntity></responsibleParty>')
    xml = f'''<?xml version="1.0" encoding="UTF-8"?>
<ClinicalDocument xmlns="urn:hl7-org:v3" xmlns:lab="urn:oid:1.3.6.1.4.1.19376.1.3.2" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <realmCode code="FR"/>
  <typeId root="2.16.840.1.113883.1.3" extension="POCD_HD000040"/>
  {templates}
  <id root="{d.doc_id}"/>
  <code code="{d.code[0]}" displayName="{escape(d.code[1])}" codeSystem="2.16.840.1.113883.6.1" codeSystemName="LOINC"/>
  <title>{escape(d.title)}</title>
  <effectiveTime value="{d.time}"/>
  <confidentialityCode code="{d.confidentiality}" codeSystem="2.16.840.1.113883.5.25"/>
  <languageCode code="fr-FR"/>
  <setId root="{d.set_id}"/>
  <versionNumber value="{d.version}"/>
  <recordTarget>
    <patientRole>
      <id root="{INS_TEST}" extension="{p.ins}"/>
      <id root="{HOSPITAL_OID}" extension="{p.ipp}"/>
      <patient classCode="PSN">
        <name>
          <family qualifier="BR">{p.birth_family}</family>
          <given>{p.given}</given>
          <given qualifier="BR">{p.first_given}</given>
          <family qualifier="CL">{p.used_family}</family>
          <given qualifier="CL">{p.first_given}</given>
        </name>
        <administrativeGenderCode code="{p.gender}" codeSystem="2.16.840.1.113883.5.1"/>
        <birthTime value="{p.birth}"/>
        <birthplace><place><addr><county>{p.birthplace_code}</county><city>{p.birthplace_city}</city></addr></place></birthplace>
      </patient>
    </patientRole>
  </recordTarget>
  <author>
    <time value="{d.time}"/>
    <assignedAuthor>{_person(d.author, "assignedPerson", d.place)}</assignedAuthor>
  </author>
  <custodian><assignedCustodian><representedCustodianOrganization>
    <id root="1.2.250.1.71.4.2.2" extension="{d.place.idnatst}"/><name>{escape(d.place.name)}</name>
  </representedCustodianOrganization></assignedCustodian></custodian>
  <legalAuthenticator>
    <time value="{d.time}"/>
    <signatureCode code="S"/>
    <assignedEntity>{_person(d.author, "assignedPerson", d.place, with_setting=True)}</assignedEntity>
  </legalAuthenticator>
  <participant typeCode="INF">
    <functionCode code="PCP" displayName="Médecin Traitant" codeSystem="2.16.840.1.113883.5.88"/>
    <associatedEntity classCode="PROV">{_person(GP, "associatedPerson", None)}</associatedEntity>
  </participant>
  <documentationOf>
    <serviceEvent classCode="ACT" moodCode="EVN">
      {event_code}{lab_status}
      <effectiveTime><low value="{d.event_low or d.time}"/>{f'<high value="{d.event_high}"/>' if d.event_high else ""}</effectiveTime>
      <performer typeCode="PRF">{performer_template}
        <assignedEntity>{performer}</assignedEntity>
      </performer>
    </serviceEvent>
  </documentationOf>
  {replaces}
  <componentOf>
    <encompassingEncounter>
      <effectiveTime><low value="{d.event_low or d.time}"/>{f'<high value="{d.event_high}"/>' if d.event_high else ""}</effectiveTime>
      {responsible}
      <location><healthCareFacility>
        <code code="{d.place.facility[0]}" displayName="{escape(d.place.facility[1])}" codeSystem="1.2.250.1.71.4.2.4"/>
      </healthCareFacility></location>
    </encompassingEncounter>
  </componentOf>
  <component>{body}</component>
</ClinicalDocument>
'''
    return xml.encode("utf-8")


ROOT = "1.2.250.1.213.1.1.9.2"  # document ids of the fictional hospital's sample documents


def _simple_observation(id_root: str, templates: list[str], code: tuple[str, str, str], time: str, value: str,
                        reference: str) -> str:
    """An IHE PCC simple observation entry, its narrative referenced in the section's text."""
    template_xml = "".join(f'<templateId root="{t}"/>' for t in ["1.3.6.1.4.1.19376.1.5.3.1.4.13", "1.2.250.1.213.1.1.3.48",
                                                                *templates])
    return (f'<entry><observation classCode="OBS" moodCode="EVN">{template_xml}<id root="{id_root}"/>'
            f'<code code="{code[0]}" displayName="{escape(code[2])}" codeSystem="{code[1]}"/>'
            f'<text><reference value="#{reference}"/></text><statusCode code="completed"/>'
            f'<effectiveTime value="{time}"/>{value}</observation></entry>')


def _section(templates: list[str], code: tuple[str, str], title: str, text: str) -> str:
    template_xml = "".join(f'<templateId root="{t}"/>' for t in templates)
    return (f'<section>{template_xml}<code code="{code[0]}" displayName="{escape(code[1])}" '
            f'codeSystem="2.16.840.1.113883.6.1"/><title>{escape(title)}</title><text>{escape(text)}</text></section>')


def imaging_sections(d: "Document", indication: str, history: str, technique: str, results: str,
                     conclusion: str) -> list[str]:
    """The sections of CR-IMG 2024.01 (DICOM part 20 with the CI-SIS templates), as its schematron
    CI-SIS_IMG-CR-IMG_2024.01 requires them: clinical information (request, history), the imaging
    procedure with its act and the DICOM object catalogue, findings, conclusion."""
    exam, modality = d.event_codes[0], d.event_codes[1]
    study = f"{d.doc_id}.100"
    time = d.event_low or d.time
    request = (_section(["1.2.840.10008.9.7", "1.2.250.1.213.1.1.2.211"], ("55115-0", "Demande"),
                        "Justification de la demande d'examen", indication)
               .replace("<section>", '<section classCode="DOCSECT" moodCode="EVN">'))
    observations = "".join(
        f'<entry><observation classCode="OBS" moodCode="EVN"><templateId root="2.16.840.1.113883.10.20.6.2.13"/>'
        f'<templateId root="1.2.250.1.213.1.1.3.150"/><id root="{d.doc_id}.{110 + n}"/>'
        f'<code code="{code}" displayName="{label}" codeSystem="2.16.840.1.113883.6.1"/>'
        f'<text><reference value="#antecedent-{n}"/></text><statusCode code="completed"/>'
        f'<value xsi:type="CD"{value}><originalText><reference value="#antecedent-{n}"/></originalText></value>'
        f'<targetSiteCode nullFlavor="MSK"/></observation></entry>'
        for n, (code, label, value) in enumerate([
            ("11348-0", "Antécédents médicaux", ""), ("47519-4", "Antécédents chirurgicaux", ""),
            # The schematron requires a contraindication (its message says "if it exists", its test does not).
            ("64100-1", "Contre-indications", f' code="{CONTRAINDICATIONS[modality[0]][0]}" displayName="'
             f'{CONTRAINDICATIONS[modality[0]][1]}" codeSystem="1.2.250.1.213.1.1.4.322"')], start=1))
    medical_history = (f'<section><templateId root="2.16.840.1.113883.10.20.22.2.39"/>'
                       f'<templateId root="1.2.250.1.213.1.1.2.213"/><code code="11329-0" displayName="Historique médical" '
                       f'codeSystem="2.16.840.1.113883.6.1"/><title>Antécédents médicaux, chirurgicaux, contre-indications</title>'
                       f'<text><content ID="antecedent-1">{escape(history)}</content> '
                       f'<content ID="antecedent-2">Aucun antécédent chirurgical.</content> '
                       f'<content ID="antecedent-3">{CONTRAINDICATIONS[modality[0]][1]}</content></text>{observations}</section>')
    clinical = (_section(["1.2.840.10008.9.2", "1.2.250.1.213.1.1.2.205"], ("55752-0", "Informations cliniques"),
                         "Informations cliniques", "")
                .replace("</section>", f"<component>{request}</component><component>{medical_history}</component></section>"))
    act = (f'<entry><procedure moodCode="EVN" classCode="PROC"><templateId root="1.2.840.10008.9.14"/>'
           f'<templateId root="1.2.250.1.213.1.1.3.153"/><id root="{d.doc_id}.101"/>'
           f'<code code="{exam[0]}" displayName="{escape(exam[2])}" codeSystem="{exam[1]}">'
           f'<originalText mediaType="text/xml"><reference value="#acte-1"/></originalText></code>'
           f'<text><reference value="#acte-1-description"/></text><effectiveTime value="{time}"/>'
           f'<methodCode code="{modality[0]}" displayName="{escape(modality[2])}" codeSystem="{modality[1]}">'
           f'<originalText mediaType="text/xml"><reference value="#acte-1-modalite"/></originalText></methodCode>'
           f'<targetSiteCode code="{SITES[exam[0]][0]}" displayName="{SITES[exam[0]][1]}" '
           f'codeSystem="2.16.840.1.113883.6.96"/></procedure></entry>')
    catalogue = (f'<section classCode="DOCSECT" moodCode="EVN"><templateId root="2.16.840.1.113883.10.20.6.1.1"/>'
                 f'<templateId root="1.2.250.1.213.1.1.2.217"/><id root="{d.doc_id}.102"/>'
                 f'<code code="121181" displayName="Catalogue d\'objets DICOM" codeSystem="1.2.840.10008.2.16.4"/>'
                 f'<title>Catalogue d\'objets DICOM</title><text><table><tbody><tr><td>Examen {study}</td>'
                 f'<td><content ID="serie-1-modalite">{escape(modality[2])}</content></td>'
                 f'<td><content ID="instance-1-classe">Images de l\'examen</content></td></tr></tbody></table></text>'
                 f'<entry><act classCode="ACT" moodCode="EVN"><templateId root="1.2.840.10008.9.16"/>'
                 f'<templateId root="1.2.250.1.213.1.1.3.155"/><id root="{study}"/>'
                 f'<code code="113014" displayName="Examen" codeSystem="1.2.840.10008.2.16.4"/>'
                 f'<effectiveTime value="{time}"/><entryRelationship typeCode="COMP"><act classCode="ACT" moodCode="EVN">'
                 f'<templateId root="1.2.840.10008.9.17"/><templateId root="1.2.250.1.213.1.1.3.156"/>'
                 f'<id root="{study}.1"/><code code="113015" displayName="Séries" codeSystem="1.2.840.10008.2.16.4">'
                 f'<qualifier><name code="121139" displayName="Modalité" codeSystem="1.2.840.10008.2.16.4"/>'
                 f'<value code="{modality[0]}" displayName="{escape(modality[2])}" codeSystem="1.2.840.10008.2.16.4">'
                 f'<originalText mediaType="text/plain"><reference value="#serie-1-modalite"/></originalText></value>'
                 f'</qualifier></code><effectiveTime value="{time}"/><entryRelationship typeCode="COMP">'
                 f'<observation classCode="DGIMG" moodCode="EVN"><templateId root="1.2.840.10008.9.18"/>'
                 f'<templateId root="1.2.250.1.213.1.1.3.157"/><id root="{study}.1.1"/>'
                 f'<code code="{SOP_CLASSES[modality[0]][0]}" displayName="{SOP_CLASSES[modality[0]][1]}" '
                 f'codeSystem="1.2.840.10008.2.6.1"><originalText><reference value="#instance-1-classe"/></originalText>'
                 f'</code><effectiveTime value="{time}"/></observation></entryRelationship></act></entryRelationship>'
                 f'</act></entry></section>')
    procedure = (f'<section><templateId root="1.2.840.10008.9.3"/><templateId root="1.2.250.1.213.1.1.2.206"/>'
                 f'<id root="{d.doc_id}.103"/><code code="55111-9" displayName="Description de l\'acte d\'imagerie" '
                 f'codeSystem="2.16.840.1.113883.6.1"/><title>Technique d\'imagerie</title><text><table><tbody><tr>'
                 f'<td><content ID="acte-1">{escape(exam[2])}</content></td>'
                 f'<td><content ID="acte-1-description">{escape(technique)}</content></td>'
                 f'<td><content ID="acte-1-modalite">{escape(modality[2])}</content></td></tr></tbody></table></text>'
                 f'{act}<component>{catalogue}</component></section>')
    return [
        clinical,
        procedure,
        _section(["2.16.840.1.113883.10.20.6.1.2", "1.2.250.1.213.1.1.2.208"], ("59776-5", "Procedure findings"),
                 "Résultats", results),
        _section(["1.2.840.10008.9.5", "1.2.250.1.213.1.1.2.209"], ("19005-8", "Radiology Impression"),
                 "Conclusion", conclusion),
    ]


# A contraindication to the modality's examination (JDV_Contre_indications_CISIS).
CONTRAINDICATIONS = {"MR": ("MED-1109", "Patient claustrophobe"), "CT": ("MED-1105", "Hypersensibilité au PDC iodé")}
# The anatomic region (SNOMED CT) of each exam of the samples.
SITES = {"24724-7": ("361291001", "région entière du genou"), "24627-2": ("302551006", "thorax entier")}
# The DICOM storage class of each modality's images (DCMUID 1.2.840.10008.2.6.1).
SOP_CLASSES = {"MR": ("1.2.840.10008.5.1.4.1.1.4", "MR Image Storage"),
               "CT": ("1.2.840.10008.5.1.4.1.1.2", "CT Image Storage"),
               "US": ("1.2.840.10008.5.1.4.1.1.6.1", "Ultrasound Image Storage")}


def biology_sections(d: "Document") -> list[str]:
    """The sections of CR-BIO 2024.01 (schematron CI-SIS_BIO-CR-BIO_2024.01): one FR-CR-de-biologie
    chapter per discipline, each with its results (IHE XD-LAB entries), and the PDF copy of the report."""
    chapters = []
    for n, (chapter_code, chapter_name, test_code, test_name, value, unit) in enumerate(d.biology, start=1):
        result = (f'<entry typeCode="DRIV"><templateId root="1.3.6.1.4.1.19376.1.3.1"/>'
                  f'<templateId root="1.2.250.1.213.1.1.3.21"/><act classCode="ACT" moodCode="EVN">'
                  f'<code code="{chapter_code}" displayName="{escape(chapter_name)}" codeSystem="2.16.840.1.113883.6.1"/>'
                  f'<statusCode code="completed"/><entryRelationship typeCode="COMP">'
                  f'<observation classCode="OBS" moodCode="EVN"><templateId root="1.3.6.1.4.1.19376.1.3.1.6"/>'
                  f'<templateId root="1.2.250.1.213.1.1.3.80"/>'
                  f'<code code="{test_code}" displayName="{escape(test_name)}" codeSystem="2.16.840.1.113883.6.1">'
                  f'<originalText><reference value="#resultat-{n}"/></originalText></code>'
                  f'<statusCode code="completed"/><effectiveTime value="{d.event_low or d.time}"/>'
                  f'<value xsi:type="PQ" value="{value}" unit="{unit}"/></observation></entryRelationship></act></entry>')
        chapters.append(
            f'<section><templateId root="1.3.6.1.4.1.19376.1.3.3.2.1"/><templateId root="1.2.250.1.213.1.1.2.70"/>'
            f'<code code="{chapter_code}" displayName="{escape(chapter_name)}" codeSystem="2.16.840.1.113883.6.1"/>'
            f'<title>{escape(chapter_name)}</title><text><table><tbody><tr><td><content ID="resultat-{n}">'
            f'{escape(test_name)}</content></td><td>{value} {unit}</td></tr></tbody></table></text>{result}</section>')
    copy = base64.b64encode(pdf([f"Compte rendu d'examens biologiques de {d.patient.first_given} {d.patient.used_family}"]
                                + [f"{name} : {value} {unit}" for _, _, _, name, value, unit in d.biology])).decode()
    chapters.append(
        f'<section><templateId root="1.2.250.1.213.1.1.2.243"/><id root="{d.doc_id}.120"/>'
        f'<code code="55108-5" displayName="Copie du document" codeSystem="2.16.840.1.113883.6.1"/>'
        f'<title>Copie du document</title><text><table><tbody><tr><td><renderMultiMedia referencedObject="copie"/>'
        f'</td></tr></tbody></table></text><entry><organizer classCode="CLUSTER" moodCode="EVN">'
        f'<templateId root="1.2.250.1.213.1.1.3.18"/><id root="{d.doc_id}.121"/>'
        f'<code code="55107-7" displayName="Document attaché" codeSystem="2.16.840.1.113883.6.1"/>'
        f'<statusCode code="completed"/><component><observation classCode="OBS" moodCode="EVN">'
        f'<templateId root="1.3.6.1.4.1.19376.1.5.3.1.4.13"/><templateId root="1.2.250.1.213.1.1.3.48"/>'
        f'<templateId root="1.2.250.1.213.1.1.3.48.18"/><id root="{d.doc_id}.122"/>'
        f'<code code="69764-9" displayName="Type de document" codeSystem="2.16.840.1.113883.6.1"/>'
        f'<statusCode code="completed"/><effectiveTime nullFlavor="NA"/>'
        f'<value xsi:type="CD" code="55108-5" displayName="Copie du document" codeSystem="2.16.840.1.113883.6.1"/>'
        f'</observation></component><component><observationMedia classCode="OBS" moodCode="EVN" ID="copie">'
        f'<value mediaType="application/pdf" representation="B64">{copy}</value></observationMedia></component>'
        f'</organizer></entry></section>')
    return chapters


def ldl_ses_sections(time: str, doc_id: str, reason: str, stay: str, treatment: str, follow_up: str) -> list[str]:
    """The sections LDL-SES 2022.01 requires (schematron CI-SIS_LDL-SES_2022.01): document status,
    reason for hospitalisation, results and events of the stay, treatments at discharge, follow-up."""
    day = time[:8]
    status = _simple_observation(f"{doc_id}.10", ["1.2.250.1.213.1.1.3.48.16", "1.2.250.1.213.1.1.3.48.16.1"],
                                 ("GEN-065", "1.2.250.1.213.1.1.4.322", "Statut du document"), day,
                                 '<value xsi:type="CD" code="255594003" displayName="complet" codeSystem="2.16.840.1.113883.6.96"/>',
                                 "statut")
    return [
        ('<section><templateId root="1.2.250.1.213.1.1.2.35"/><templateId root="1.2.250.1.213.1.1.2.35.1"/>'
         f'<id root="{doc_id}.11"/><code code="33557-0" displayName="Etat d\'achèvement" codeSystem="2.16.840.1.113883.6.1"/>'
         '<title>Statut du document</title><text><content ID="statut">Complet</content></text>'
         f'{status}</section>'),
        ('<section><templateId root="1.3.6.1.4.1.19376.1.5.3.1.3.1"/><templateId root="1.2.250.1.213.1.1.2.127"/>'
         '<code code="42349-1" displayName="Raison de la recommandation" codeSystem="2.16.840.1.113883.6.1"/>'
         f'<title>Motif de l\'hospitalisation</title><text>{escape(reason)}</text></section>'),
        ('<section><templateId root="1.3.6.1.4.1.19376.1.5.3.1.1.21.2.9"/>'
         '<templateId root="1.3.6.1.4.1.19376.1.7.3.1.1.13.7"/><templateId root="1.2.250.1.213.1.1.2.163"/>'
         '<templateId root="1.2.250.1.213.1.1.2.163.1"/>'
         '<code code="42545-4" displayName="Synthèse médicale du séjour" codeSystem="2.16.840.1.113883.6.1"/>'
         f'<title>Synthèse médicale du séjour</title><text>{escape(stay)}</text></section>'),
        ('<section><templateId root="1.3.6.1.4.1.19376.1.5.3.1.3.22"/><templateId root="1.2.250.1.213.1.1.2.146"/>'
         '<code code="10183-2" displayName="Traitements à la sortie" codeSystem="2.16.840.1.113883.6.1"/>'
         f'<title>Traitements à la sortie</title><text>{escape(treatment)}</text></section>'),
        ('<section><templateId root="2.16.840.1.113883.10.20.1.10"/><templateId root="1.3.6.1.4.1.19376.1.5.3.1.3.36"/>'
         '<templateId root="1.2.250.1.213.1.1.2.158"/>'
         '<code code="18776-5" displayName="Suites à donner" codeSystem="2.16.840.1.113883.6.1"/>'
         f'<title>Suites à donner</title><text>{escape(follow_up)}</text></section>'),
    ]
LDL_SES = ("11490-0", "Lettre de liaison à la sortie d'un établissement de soins")
# CR-IMG 2024.01: the CI-SIS model and the DICOM part 20 templates (imaging report, general and imaging headers).
IMAGING_TEMPLATES = [("1.2.840.10008.9.1", None), ("1.2.840.10008.9.20", None), ("1.2.840.10008.9.21", None),
                     ("1.2.250.1.213.1.1.1.45", "2024.01")]

DOCUMENTS = [
    Document("ldl-ses-martin.xml", f"{ROOT}.1.1", f"{ROOT}.1", 1, LDL_SES,
             "Lettre de liaison à la sortie - service de médecine interne", "20260310163000+0100",
             PATIENTS["martin"], INTERNIST, CH, [], "20260302091500+0100", "20260310160000+0100",
             [("1.2.250.1.213.1.1.1.29", "2022.01")],
             model_sections=ldl_ses_sections(
                 "20260310163000+0100", f"{ROOT}.1.1", "Pneumopathie franche lobaire aiguë droite.",
                 "Antibiothérapie par amoxicilline IV puis per os, apyrexie à J3, radiographie de contrôle satisfaisante.",
                 "Amoxicilline 1 g trois fois par jour pendant 4 jours.",
                 "Consultation de contrôle chez le médecin traitant à J10.")),
    Document("cr-hospitalisation-lefevre.xml", f"{ROOT}.2.1", f"{ROOT}.2", 1, ("34112-3", "CR hospitalier (séjour)"),
             "Compte rendu d'hospitalisation - cardiologie", "20260115110000+0100", PATIENTS["lefevre"], INTERNIST, CH,
             [], "20260108080000+0100", "20260114180000+0100", [("1.3.6.1.4.1.19376.1.2.20", None)],
             pdf_lines=["Centre hospitalier de Saint-Aubin - Service de cardiologie",
                        "Compte rendu d'hospitalisation du 08/01/2026 au 14/01/2026",
                        "Patiente : Claire LEFEVRE (nom d'usage DUBOIS), née le 23/08/1992",
                        "Motif : palpitations et malaise sans perte de connaissance.",
                        "Holter ECG : tachycardie jonctionnelle paroxystique.",
                        "Ablation par radiofréquence le 12/01/2026, suites simples.",
                        "Sortie sans traitement. Contrôle Holter à 3 mois.",
                        "Dr Sophie BERNARD"]),
    Document("cr-operatoire-garnier.xml", f"{ROOT}.3.1", f"{ROOT}.3", 1, ("34874-8", "CR opératoire"),
             "Compte rendu opératoire - prothèse totale de hanche gauche", "20260204143000+0100", PATIENTS["garnier"],
             SURGEON, CLINIC, [("NEKA020", "1.2.250.1.213.2.5",
                                "Remplacement de l'articulation coxofémorale par prothèse totale, par abord postérieur")],
             "20260204090000+0100", "20260204113000+0100", [("1.3.6.1.4.1.19376.1.2.20", None)],
             pdf_lines=["Clinique du Parc - Chirurgie orthopédique",
                        "Compte rendu opératoire du 04/02/2026",
                        "Opéré : Jean GARNIER, né le 19/02/1961",
                        "Indication : coxarthrose gauche évoluée, douleur invalidante malgré traitement médical.",
                        "Anesthésie : rachianesthésie. Installation en décubitus latéral droit.",
                        "Voie d'abord postérieure. Luxation de la tête fémorale, ostéotomie du col.",
                        "Cotyle : cupule press-fit 52 mm, double mobilité. Fémur : tige sans ciment taille 5.",
                        "Contrôle de stabilité et de longueur satisfaisant. Fermeture plan par plan, pas de drain.",
                        "Durée : 2 h 30. Pertes sanguines estimées : 350 ml. Pas d'incident.",
                        "Suites : appui complet autorisé, anticoagulation préventive 35 jours.",
                        "Dr Marc ROUSSEAU"]),
    Document("cr-imagerie-irm-lefevre.xml", f"{ROOT}.4.1", f"{ROOT}.4", 1, ("18748-4", "CR d'imagerie médicale"),
             "IRM du genou droit", "20260220101500+0100", PATIENTS["lefevre"], RADIOLOGIST, CABINET,
             [("24724-7", "2.16.840.1.113883.6.1", "RM genou"), ("MR", "1.2.840.10008.2.16.4", "Magnetic Resonance")],
             "20260220094500+0100", "20260220100000+0100",
             IMAGING_TEMPLATES,
             imaging=("Gonalgie droite après torsion, suspicion de lésion méniscale.", "Pas d'antécédent chirurgical.",
                      "Séquences sagittales et coronales DP fat-sat, T1 sagittale, 1,5 T.",
                      "Fissure horizontale de la corne postérieure du ménisque médial atteignant la surface "
                      "articulaire inférieure. Ligaments croisés intacts.",
                      "Lésion méniscale médiale de grade 3.")),
    Document("cr-imagerie-scanner-garnier.xml", f"{ROOT}.5.1", f"{ROOT}.5", 1, ("18748-4", "CR d'imagerie médicale"),
             "Scanner thoracique", "20260112150000+0100", PATIENTS["garnier"], RADIOLOGIST, CABINET,
             [("24627-2", "2.16.840.1.113883.6.1", "CT thorax"), ("CT", "1.2.840.10008.2.16.4", "Computed Tomography")],
             "20260112143000+0100", "", IMAGING_TEMPLATES,
             imaging=("Bilan préopératoire, ancien fumeur.", "Tabagisme sevré depuis 2015.",
                      "Acquisition hélicoïdale thoracique sans injection.",
                      "Pas de nodule suspect. Emphysème centrolobulaire modéré des apex.",
                      "Emphysème modéré, pas de lésion suspecte.")),
    Document("cr-imagerie-echographie-moreau.xml", f"{ROOT}.6.1", f"{ROOT}.6", 1, ("18748-4", "CR d'imagerie médicale"),
             "Échographie abdominale", "20260305113000+0100", PATIENTS["moreau"], RADIOLOGIST, CABINET,
             [("24558-9", "2.16.840.1.113883.6.1", "US abdomen"), ("US", "1.2.840.10008.2.16.4", "Ultrasound")],
             "20260305110000+0100", "", [("1.3.6.1.4.1.19376.1.2.20", None)],
             pdf_lines=["Cabinet d'imagerie des Tilleuls", "Échographie abdominale du 05/03/2026",
                        "Patiente : Léa MOREAU, née le 14/05/2012",
                        "Indication : douleurs abdominales récidivantes.",
                        "Foie, voies biliaires, pancréas, rate et reins sans anomalie.",
                        "Pas d'épanchement. Appendice non visualisé, pas d'adénopathie mésentérique.",
                        "Conclusion : échographie abdominale normale.", "Dr Isabelle FAURE"]),
    Document("cr-biologie-martin.xml", f"{ROOT}.7.1", f"{ROOT}.7", 1, ("11502-2", "CR d'examens biologiques"),
             "Compte rendu d'examens biologiques", "20260303080000+0100", PATIENTS["martin"], BIOLOGIST, LAB,
             [("18719-5", "2.16.840.1.113883.6.1", "Biochimie")], "20260303071500+0100", "",
             [("1.3.6.1.4.1.19376.1.3.3", None), ("1.2.250.1.213.1.1.1.55", "2024.01")],
             biology=[("18723-7", "Hématologie", "6690-2", "Leucocytes [Nombre/Volume] Sang", "14.2", "10*9/L"),
                      ("18719-5", "Biochimie", "1988-5", "Protéine C réactive [Masse/Volume] Sérum", "86", "mg/L")]),
]

# A new version of the MRI report: same setId, version 2, relatedDocument RPLC.
REPLACEMENT = Document("cr-imagerie-irm-lefevre-v2.xml", f"{ROOT}.4.2", f"{ROOT}.4", 2, ("18748-4", "CR d'imagerie médicale"),
                       "IRM du genou droit (compte rendu complété)", "20260221090000+0100", PATIENTS["lefevre"],
                       RADIOLOGIST, CABINET,
                       [("24724-7", "2.16.840.1.113883.6.1", "RM genou"), ("MR", "1.2.840.10008.2.16.4", "Magnetic Resonance")],
                       "20260220094500+0100", "20260220100000+0100",
                       IMAGING_TEMPLATES,
                       imaging=("Gonalgie droite après torsion, suspicion de lésion méniscale.",
                                "Pas d'antécédent chirurgical.",
                                "Séquences sagittales et coronales DP fat-sat, T1 sagittale, 1,5 T.",
                                "Fissure horizontale de la corne postérieure du ménisque médial. Épanchement articulaire "
                                "de faible abondance, absent du premier compte rendu.",
                                "Lésion méniscale médiale de grade 3, épanchement minime."),
                       replaces=f"{ROOT}.4.1")


# A document submitted through ITI-65 with an IHE DSG signature (signed by `gateway demo setup`).
SIGNED = Document("synthese-moreau.xml", f"{ROOT}.8.1", f"{ROOT}.8", 1, ("34133-9", "Synthèse d'épisode de soins"),
                  "Synthèse de consultation de pédiatrie", "20260310170000+0100", PATIENTS["moreau"], INTERNIST, CH,
                  [], "20260310160000+0100", "20260310163000+0100", [],
                  sections=[("42349-1", "Motif", "Douleurs abdominales récidivantes depuis deux mois."),
                            ("8648-8", "Synthèse", "Examen clinique et échographie abdominale normaux. Probables douleurs "
                             "abdominales fonctionnelles. Conseils hygiéno-diététiques, réévaluation dans trois mois.")])


def invalid_documents(valid: bytes) -> dict[str, bytes]:
    text = valid.decode()
    bad_key = PATIENTS["martin"].ins[:-2] + "00"
    no_author = text.split("<author>")[0] + text.split("</author>")[1]
    return {
        "bad-ins-key.xml": text.replace(PATIENTS["martin"].ins, bad_key).replace(f"{ROOT}.1.1", f"{ROOT}.90.1").encode(),
        "missing-author.xml": no_author.replace(f"{ROOT}.1.1", f"{ROOT}.91.1").encode(),
        "type-outside-dmp.xml": text.replace('code="11490-0"', 'code="18842-5"').replace(f"{ROOT}.1.1", f"{ROOT}.92.1").encode(),
        "not-a-clinical-document.xml": b'<?xml version="1.0"?>\n<section xmlns="urn:hl7-org:v3"><title>Note</title></section>\n',
        "unparseable.xml": text[: len(text) // 2].encode(),
        "external-entity.xml": (b'<?xml version="1.0"?>\n<!DOCTYPE ClinicalDocument [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'
                                b'<ClinicalDocument xmlns="urn:hl7-org:v3"><title>&xxe;</title></ClinicalDocument>\n'),
    }


SENDER = "MSH|^~\\&|{app}|CH-SAINT-AUBIN|DMP-GATEWAY|DMP|{time}||{type}|{control}|P|{version}|||||FRA|{charset}|||{profile}"
PAM = "2.11^IHE_FRANCE-2.11-PAM"
CISIS = "2.1^CISIS_CDA_HL7_V2"
ACCENTED = Patient("285117505612337", "900000005", "ŒUVRAY", "HÉLÈNE ZOÉ", "HÉLÈNE", "ŒUVRAY", "F",
                   "19851107", "75056", "PARIS")


def _pid(p: Patient) -> str:
    return (f"PID|1||{p.ipp}^^^CH-SAINT-AUBIN&{HOSPITAL_OID}&ISO^PI~{p.ins}^^^ASIP-SANTE-INS-NIR&{INS_TEST}&ISO^INS||"
            f"{p.birth_family}^{p.first_given}^{p.given}^^^^L~{p.used_family}^{p.first_given}^^^^^D||{p.birth}|{p.gender}"
            f"|||^^^^^^BDL^^{p.birthplace_code}" + "|" * 21 + "VALI")


def _adt(event: str, control: str, p: Patient, zfa: str | None = None, charset: str = "UNICODE UTF-8") -> str:
    lines = [SENDER.format(app="GAM", time="20260310080000", type=f"ADT^{event}^ADT_{event}", control=control,
                           version="2.5^FRA^2.11", charset=charset, profile=PAM),
             f"EVN||20260310080000", _pid(p), "PV1|1|N"]
    if zfa:
        lines.append(zfa)
    return "\n".join(lines) + "\n"


def _flags(masked: str, invisible_patient: str, invisible_representatives: str) -> list[str]:
    values = [("MASQUE_PS", "Masqué aux professionnels de Santé", masked),
              ("INVISIBLE_PATIENT", "Document Non Visible par le patient", invisible_patient),
              ("INVISIBLE_REP_LEGAUX", "Non visible par les représentants Légaux du patient", invisible_representatives),
              ("DESTDMP", "Destinataire DMP", "Y")]
    return [f"OBX|{i}|CWE|{code}^{label}^MetaDMPMSS||{value}^^expandedYes-NoIndicator||||||F|"
            for i, (code, label, value) in enumerate(values, start=2)]


def _mdm(event: str, control: str, d: Document, data: bytes | None, parent: str | None = None,
         flags: tuple[str, str, str] = ("N", "N", "N")) -> str:
    p = d.patient
    payload = base64.b64encode(data).decode() if data else ""
    order = {"T02": "NW", "T10": "RO", "T04": "CA"}[event]
    lines = [SENDER.format(app="DPI", time="20260310170000", type=f"MDM^{event}^MDM_T02", control=control,
                           version="2.6", charset="UNICODE UTF-8", profile=CISIS),
             "EVN||20260310170000", _pid(p), "PV1|1|I", f"ORC|{order}|",
             f"OBR|1|||{d.code[0]}^{d.code[1]}^LN|",
             f"TXA|1|{d.code[0]}|TEXT|{d.time[:12]}||||||||{d.doc_id}|{parent or ''}||||AU|||||{d.author.idnatps}",
             f"OBX|1|ED|{d.code[0]}^{d.code[1]}^LN||^text^XML^Base64^{payload}||||||F|",
             f"PRT||UC||SB^^participation|{d.author.idnatps}^{d.author.family}^{d.author.given}^^^^^^"
             f"ASIP-SANTE-PS&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS|||{d.place.name}^^^^^ASIP-SANTE-ST&1.2.250.1.71.4.2.2&ISO"
             f"^FINEG^^^{d.place.idnatst[1:]}",
             *_flags(*flags)]
    return "\n".join(lines) + "\n"


def _oru(control: str, d: Document, data: bytes) -> str:
    lines = [SENDER.format(app="SIL", time="20260310180000", type="ORU^R01^ORU_R01", control=control,
                           version="2.5", charset="UNICODE UTF-8", profile=CISIS),
             _pid(d.patient), "PV1|1|O", "ORC|NW|", f"OBR|1|||{d.code[0]}^{d.code[1]}^LN||||||||||||||||||||F",
             f"OBX|1|ED|{d.code[0]}^{d.code[1]}^LN||^TEXT^XML^Base64^{base64.b64encode(data).decode()}||||||F|",
             f"PRT||UC||SB^^participation|{d.author.idnatps}^{d.author.family}^{d.author.given}^^^^^^"
             "ASIP-SANTE-PS&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS",
             *[line.replace("|CWE|", "|CE|") for line in _flags("N", "N", "N")]]
    return "\n".join(lines) + "\n"


def hl7v2_messages() -> dict[str, bytes]:
    """Our own PAM-FR and CI-SIS messages, for the demo, the tests and integrators trying `gateway send`."""
    irm = next(d for d in DOCUMENTS if d.file == "cr-imagerie-irm-lefevre.xml")
    bio = next(d for d in DOCUMENTS if d.file == "cr-biologie-martin.xml")
    return {
        "adt-a01-martin.hl7": _adt("A01", "ADT0001", PATIENTS["martin"],
                                   "ZFA|ACTIF|20260310080000|||||||INO|20260310080000|IC|20260310080000").encode(),
        "adt-a31-garnier-opposition.hl7": _adt("A31", "ADT0002", PATIENTS["garnier"],
                                               "ZFA|ACTIF|20260311090000|||||||IO|20260311090000|IC|20260311090000").encode(),
        "adt-a28-oeuvray-utf8.hl7": _adt("A28", "ADT0003", ACCENTED).encode("utf-8"),
        "adt-a28-oeuvray-8859-15.hl7": _adt("A28", "ADT0004", ACCENTED, charset="8859/15").encode("iso8859-15"),
        "mdm-1-t02-cr-imagerie-irm-lefevre.hl7": _mdm("T02", "MDM0001", irm, cda(irm), flags=("N", "Y", "N")).encode(),
        "mdm-2-t10-cr-imagerie-irm-lefevre.hl7": _mdm("T10", "MDM0002", REPLACEMENT, cda(REPLACEMENT),
                                                    parent=irm.doc_id).encode(),
        "mdm-3-t04-cr-imagerie-irm-lefevre.hl7": _mdm("T04", "MDM0003", REPLACEMENT, None, parent=irm.doc_id).encode(),
        "oru-r01-cr-biologie-martin.hl7": _oru("ORU0001", bio, cda(bio)).encode(),
    }


KIT = HERE.parent / "conformance" / "cases"


def kit_document(d: Document, *, doc: str = "DOC1", set_id: str = "${OID}.100", ins: str = "INS", ipp: str = "IPP",
                 parent: str | None = None) -> bytes:
    """A sample as the conformance kit sends it: its identifiers replaced by the kit's variables, so
    that every run of a case uses fresh ones (conformance/README.md)."""
    text = cda(d).decode()
    if parent is not None:
        text = text.replace(f'<parentDocument><id root="{d.replaces}"/>', f'<parentDocument><id root="${{{parent}}}"/>')
    text = (text.replace(f'<setId root="{d.set_id}"/>', f'<setId root="{set_id}"/>').replace(d.doc_id, f"${{{doc}}}")
            .replace(f'extension="{d.patient.ins}"', f'extension="${{{ins}}}"')
            .replace(f'extension="{d.patient.ipp}"', f'extension="${{{ipp}}}"'))
    return text.encode()


def kit_documents() -> dict[str, bytes]:
    by_file = {d.file: d for d in DOCUMENTS}
    bio = by_file["cr-biologie-martin.xml"]
    bio_v2 = Document(bio.file, f"{bio.doc_id}.2", bio.set_id, 2, bio.code, bio.title, bio.time, bio.patient,
                      bio.author, bio.place, bio.event_codes, bio.event_low, bio.event_high, bio.templates,
                      biology=bio.biology, replaces=bio.doc_id)
    irm = by_file["cr-imagerie-irm-lefevre.xml"]
    return {
        "_shared/ldl-ses-n3.xml": kit_document(by_file["ldl-ses-martin.xml"]),
        "_shared/cr-hospitalisation-n1.xml": kit_document(by_file["cr-hospitalisation-lefevre.xml"]),
        "_shared/cr-operatoire-n1.xml": kit_document(by_file["cr-operatoire-garnier.xml"]),
        "_shared/cr-imagerie-irm-n3.xml": kit_document(irm),
        "_shared/cr-imagerie-irm-n3-v2.xml": kit_document(REPLACEMENT, doc="DOC2", parent="DOC1"),
        "_shared/cr-imagerie-n3.xml": kit_document(by_file["cr-imagerie-scanner-garnier.xml"]),
        "_shared/cr-imagerie-n1.xml": kit_document(by_file["cr-imagerie-echographie-moreau.xml"]),
        "_shared/cr-biologie-n3.xml": kit_document(bio),
        "_shared/cr-biologie-n3-v2.xml": kit_document(bio_v2, doc="DOC2", parent="DOC1"),
        "pam-fr/006-a40-merge/cda-merged.xml": kit_document(irm, ins="INS_B", ipp="IPP_B"),
        "mhd/030-paging/second.xml": kit_document(by_file["ldl-ses-martin.xml"], doc="DOC2", set_id="${OID}.101"),
    }


def main() -> None:
    for folder, documents in (("cda", DOCUMENTS), ("replacement", [REPLACEMENT]), ("signed", [SIGNED])):
        (HERE / folder).mkdir(exist_ok=True)
        for document in documents:
            (HERE / folder / document.file).write_bytes(cda(document))
    invalid_dir = HERE / "invalid"
    invalid_dir.mkdir(exist_ok=True)
    for name, data in invalid_documents(cda(DOCUMENTS[0])).items():
        (invalid_dir / name).write_bytes(data)
    patients = {key: {"ins": p.ins, "ins_system": f"urn:oid:{INS_TEST}", "ipp": p.ipp,
                      "name": f"{p.first_given} {p.used_family}"} for key, p in PATIENTS.items()}
    hl7v2_dir = HERE / "hl7v2"
    hl7v2_dir.mkdir(exist_ok=True)
    for name, data in hl7v2_messages().items():
        (hl7v2_dir / name).write_bytes(data)
    (HERE / "patients.json").write_text(json.dumps(patients, indent=2, ensure_ascii=False) + "\n")
    if KIT.is_dir():
        for name, data in kit_documents().items():
            (KIT / name).write_bytes(data)


if __name__ == "__main__":
    main()

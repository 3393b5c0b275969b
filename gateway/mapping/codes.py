"""Code systems, value sets and correspondences of the CI-SIS and the DMP.

Sources: NOS (JDV_J07 XdsTypeCode-CISIS, JDV_J57 ClassCode-DMP, JDV_J58 ConfidentialityCode-DMP,
JDV_J60 FormatCode-DMP), ASS_X04 type -> class, ASS_A11/A12 model -> formatCode.
"""
from __future__ import annotations

NOS = "https://mos.esante.gouv.fr/NOS"


def nos_system(name: str) -> str:
    """FHIR canonical of a NOS terminology, e.g. TRE_A03-ClasseDocument."""
    return f"{NOS}/{name}/FHIR/{name.replace('_', '-')}"


LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
CLASS_SYSTEM = nos_system("TRE_A03-ClasseDocument")
CONFIDENTIALITY_SYSTEM = nos_system("TRE_A08-HL7Confidentiality")
VISIBILITY_SYSTEM = nos_system("TRE_A07-StatutVisibiliteDocument")
FACILITY_SYSTEM = nos_system("TRE_R02-SecteurActivite")
PRACTICE_SETTING_SYSTEM = nos_system("TRE_A01-CadreExercice")
NON_PS_PRODUCER_SYSTEM = nos_system("TRE_A00-ProducteurDocNonPS")
FORMAT_IHE_SYSTEM = nos_system("TRE_A11-IheFormatCode")
FORMAT_CISIS_SYSTEM = nos_system("TRE_A06-FormatCodeComplementaire")
ASTM_SYSTEM = nos_system("TRE_A12-NomenclatureASTM")
URN_SYSTEM = nos_system("TRE_A10-NomenclatureURN")
# The types of a referenceIdList entry (PDSm's context.related, JDV_J231), a study's and an exam's.
REFERENCE_ID_TYPE = "urn:ietf:rfc:3986"
STUDY_INSTANCE_UID = "urn:ihe:iti:xds:2016:studyInstanceUID"
ACCESSION_NUMBER = "urn:ihe:iti:xds:2013:accession"
FR_CORE_V2_0203 = "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-0203"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"

# OIDs of the CDA header translated to FHIR canonical systems; any other OID becomes urn:oid:.
OID_SYSTEMS = {
    "2.16.840.1.113883.6.1": LOINC,
    "2.16.840.1.113883.6.96": SNOMED,
    "2.16.840.1.113883.6.3": "http://hl7.org/fhir/sid/icd-10",
    "2.16.840.1.113883.5.4": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
    "2.16.840.1.113883.5.25": CONFIDENTIALITY_SYSTEM,
    "2.16.840.1.113883.5.1": "http://terminology.hl7.org/CodeSystem/v3-AdministrativeGender",
    "2.16.840.1.113883.5.88": "http://terminology.hl7.org/CodeSystem/v3-ParticipationFunction",
    "1.2.840.10008.2.16.4": "http://dicom.nema.org/resources/ontology/DCM",
    "1.2.250.1.213.1.1.4.13": VISIBILITY_SYSTEM,
    "1.2.250.1.71.4.2.4": FACILITY_SYSTEM,
    "1.2.250.1.213.1.1.4.9": PRACTICE_SETTING_SYSTEM,
    "1.2.250.1.213.1.1.4.6": NON_PS_PRODUCER_SYSTEM,
    "1.2.250.1.213.1.1.4.1": CLASS_SYSTEM,
    "1.2.250.1.213.2.5": nos_system("TRE_R38-ActeCCAM"),
    "1.2.250.1.213.1.1.4.12": nos_system("TRE_A05-TypeDocComplementaire"),
    "1.2.250.1.213.1.1.4.5": nos_system("TRE_G15-ProfessionSante"),
}


def system_for_oid(oid: str | None) -> str | None:
    if not oid:
        return None
    return OID_SYSTEMS.get(oid, f"urn:oid:{oid}")


TYPE_SYSTEMS = {"2.16.840.1.113883.6.1": LOINC, "1.2.250.1.213.1.1.4.12": nos_system("TRE_A05-TypeDocComplementaire")}


def document_type(system_oid: str | None, code: str) -> tuple[str, str, str] | None:
    """(FHIR system, JDV_J07 display, class) of a document type; None when JDV_J07 lacks it or
    no class is associated with it. A type given without its code system is read as LOINC."""
    from .valuesets import display, document_classes

    system_oid = system_oid or "2.16.840.1.113883.6.1"
    name = display("J07", system_oid, code)
    klass = document_classes().get(code)
    if name is None or klass is None or system_oid not in TYPE_SYSTEMS:
        return None
    return TYPE_SYSTEMS[system_oid], name, klass[0]


CLASS_DISPLAYS = {
    "10": "Compte rendu",
    "11": "Synthèse",
    "31": "Imagerie médicale",
    "42": "Prescription",
    "43": "Dispensation",
    "44": "Plan de soins, protocole de soins",
    "45": "Traitement administré",
    "52": "Certificat, déclaration",
    "60": "Données de remboursement",
    "90": "Autres documents déposés par le patient",
    "95": "Document de gestion",
}

# IHE DSG detached signature document (classCode from TRE_A10, typeCode E1762 from TRE_A12).
SIGNATURE_CLASS = "urn:oid:1.3.6.1.4.1.19376.1.2.1.1.1"
SIGNATURE_TYPE = "E1762"
SIGNATURE_FORMAT = "urn:ihe:iti:dsg:detached:2014"

CONFIDENTIALITY_DISPLAYS = {"N": "Normal", "R": "Restreint", "V": "Très restreint"}
VISIBILITY_DISPLAYS = {
    "MASQUE_PS": "Masqué aux professionnels de santé",
    "INVISIBLE_PATIENT": "Non visible par le patient",
    "INVISIBLE_REPRESENTANTS_LEGAUX": "Non visible par les représentants légaux du patient",
}

# Structured (N3) CDA content models -> formatCode, keyed by the model's templateId (ASS_A11).
N3_FORMATS = {
    "1.2.250.1.213.1.1.1.29": ("urn:asip:ci-sis:ldl-ses:2017", "Lettre de liaison à la sortie d'un établissement de soins"),
    "1.2.250.1.213.1.1.1.21": ("urn:asip:ci-sis:ldl-ees:2017", "Lettre de liaison à l'entrée d'un établissement de soins"),
    "1.2.250.1.213.1.1.1.45": ("urn:ihe:rad:CDA:ImagingReportStructuredHeadings:2013", "Compte rendu d'imagerie médicale"),
    "1.2.840.10008.9.1": ("urn:ihe:rad:CDA:ImagingReportStructuredHeadings:2013", "Compte rendu d'imagerie médicale"),
    "1.2.250.1.213.1.1.1.55": ("urn:ihe:lab:xd-lab:2008", "Compte rendu structuré d'examens de biologie médicale"),
    "1.3.6.1.4.1.19376.1.3.3": ("urn:ihe:lab:xd-lab:2008", "Compte rendu structuré d'examens de biologie médicale"),
}
# A structured body whose model the gateway does not know: the generic CI-SIS format.
N3_GENERIC_FORMAT = ("urn:asip:ci-sis:2010", "Document à entête CI-SIS et corps structuré")

# Unstructured (N1) bodies -> formatCode by media type (ASS_A12).
N1_FORMATS = {
    "application/pdf": ("urn:ihe:iti:xds-sd:pdf:2008", "Document à corps non structuré en Pdf/A-1"),
    "text/plain": ("urn:ihe:iti:xds-sd:text:2008", "Document à corps non structuré en texte brut"),
    "text/rtf": ("urn:ihe:iti-fr:xds-sd:rtf:2010", "Document à corps non structuré en RTF"),
    "image/jpeg": ("urn:ihe:iti-fr:xds-sd:jpeg:2010", "Document à corps non structuré en JPEG"),
    "image/tiff": ("urn:ihe:iti-fr:xds-sd:tiff:2010", "Document à corps non structuré en TIFF"),
}


def format_system(code: str) -> str:
    if code.startswith("urn:asip"):
        return FORMAT_CISIS_SYSTEM
    return FORMAT_IHE_SYSTEM


# Identifier systems.
INS_OIDS = {
    "1.2.250.1.213.1.4.8": ("INS-NIR", "official"),
    "1.2.250.1.213.1.4.9": ("INS-NIA", "temp"),
    "1.2.250.1.213.1.4.10": ("INS-NIR-TEST", "official"),
    "1.2.250.1.213.1.4.11": ("INS-NIR-DEMO", "official"),
}
IDNATPS_OID = "1.2.250.1.71.4.2.1"
IDNATST_OID = "1.2.250.1.71.4.2.2"
RPPS_SYSTEM = "https://rpps.esante.gouv.fr"
FINESS_SYSTEM = "https://finess.esante.gouv.fr"

# Profiles.
PDSM_DOCUMENT_REFERENCE = "https://interop.esante.gouv.fr/ig/fhir/pdsm/StructureDefinition/pdsm-comprehensive-document-reference"
PDSM_SUBMISSION_SET = "https://interop.esante.gouv.fr/ig/fhir/pdsm/StructureDefinition/pdsm-submissionset-comprehensive"
PDSM_FOLDER = "https://interop.esante.gouv.fr/ig/fhir/pdsm/StructureDefinition/pdsm-folder-comprehensive"
PDSM_IS_ARCHIVED = "https://interop.esante.gouv.fr/ig/fhir/pdsm/StructureDefinition/pdsm-ext-is-archived"
FR_CORE_PATIENT = "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-patient"
FR_CORE_IDENTITY_RELIABILITY = "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-identity-reliability"
# PAM-FR PID-32 identity reliability (VIDE, PROV, VALI, DOUTE, FICTI…), FR Core's v2-0445.
FR_CORE_V2_0445 = "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-0445"
FR_CORE_BIRTH_LIST_GIVEN_NAME = "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-patient-birth-list-given-name"
# INSEE's code of the commune of birth (COG), as FR Core's birthplace extension codes it.
INSEE_COG_SYSTEM = "https://mos.esante.gouv.fr/NOS/TRE_R13-CommuneOM/FHIR/TRE-R13-CommuneOM"
FR_CORE_PRACTITIONER = "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-practitioner"
FR_CORE_ORGANIZATION = "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-organization"

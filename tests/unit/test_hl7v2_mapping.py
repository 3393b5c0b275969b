"""PAM-FR PID and ZFA, CI-SIS document flags and PRT, mapped without a database."""
import pytest

from gateway.hl7v2.er7 import Message
from gateway.mapping import hl7v2 as v2

MSH = "MSH|^~\\&|GAM|CHU|GW|DMP|20260101||ADT^A01^ADT_A01|1|P|2.5^FRA^2.11|||||FRA|UNICODE UTF-8"


def segment(text: str):
    return Message(MSH + "\r" + text, "UNICODE UTF-8").segments[1]


def test_pid_gives_the_fr_core_identity():
    pid = segment("PID|1||7^^^CHU&1.2.250.1.9&ISO^PI~279035121518989^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10&ISO^INS"
                  "~55^^^LOCAL&&^PI||PAT-TROIS^DOMINIQUE^DOMINIQUE ANNE^^^^L~DUPONT^DOMI^^^^^D||19790328|F|||"
                  "28 Av^^PARIS^^75007^FRA^H~^^^^^^BDL^^63220" + "|" * 21 + "VALI")
    info = v2.patient_info(pid)
    assert [(i.root, i.extension) for i in info.ids] == [
        ("1.2.250.1.9", "7"), ("1.2.250.1.213.1.4.10", "279035121518989"),
        ("urn:hl7v2-assigning-authority:LOCAL", "55")]
    official, usual = info.names
    assert (official.use, official.family, official.given, official.given_list) == (
        "official", ["PAT-TROIS"], ["DOMINIQUE"], "DOMINIQUE ANNE")
    assert (usual.use, usual.family) == ("usual", ["DUPONT"])
    assert (info.gender, info.birth_time, info.birthplace_code) == ("F", "19790328", "63220")
    assert info.identity_reliability == "VALI"


@pytest.mark.parametrize("zfa, consultation, feeding", [
    ("ZFA|ACTIF|20240306111154|||||||INO|20240306111154|IC|20240306111154", ("active", "permit"), ("active", "permit")),
    ("ZFA|ACTIF|20240307111154|||||||INO|20240307111154|INC|20240307111154", ("active", "deny"), ("active", "permit")),
    ("ZFA|ACTIF|20240311111154|||||||NA||NA|", ("proposed", None), ("proposed", None)),
    ("ZFA|ACTIF|20240310111154|||||||IO|20240310111154|NA|", ("proposed", None), ("active", "deny")),
    # A record that is not active takes no document, and lifts no decision on consultation.
    ("ZFA|FERME|20240310111154|20240310111154||||||INO||IC|", ("active", "permit"), ("inactive", "permit")),
    ("ZFA|FERME|20240310111154|20240310111154||||||INO||INC|", ("active", "deny"), ("inactive", "permit")),
])
def test_zfa_gives_two_consents(zfa, consultation, feeding):
    consents = v2.consents(segment(zfa), "Patient/p1")
    for kind, (status, provision) in (("consultation", consultation), ("alimentation", feeding)):
        consent = consents[kind]
        assert consent["status"] == status
        assert consent["provision"].get("type") == provision
        assert consent["patient"] == {"reference": "Patient/p1"}
    assert v2.feeding_refused(consents["alimentation"]) == (feeding[1] == "deny" or feeding[0] == "inactive")


def test_metadata_flags_become_visibility_labels():
    observations = [segment(f"OBX|{i}|CWE|{code}^x^MetaDMPMSS||{value}^^expandedYes-NoIndicator||||||F|")
                    for i, (code, value) in enumerate([("MASQUE_PS", "N"), ("INVISIBLE_PATIENT", "Y"),
                                                       ("INVISIBLE_REP_LEGAUX", "Y"), ("DESTDMP", "Y")], 2)]
    flags = v2.document_flags(observations)
    assert flags.visibility == ["INVISIBLE_PATIENT", "INVISIBLE_REPRESENTANTS_LEGAUX"] and flags.to_dmp
    assert not v2.document_flags([segment("OBX|2|CWE|DESTDMP^x^MetaDMPMSS||N||||||F|")]).to_dmp


def test_prt_send_by_is_the_sender():
    prt = segment("PRT||UC||SB^^participation|801234564895^Eric^Thomas^^^^^^ASIP-SANTE- PS&1.2.250.1.71.4.2.1&ISO"
                  "^D^^^IDNPS|||Organisation-Y^^^^^ASIP-SANTE-ST&1.2.250.1.71.4.2.2&ISO^FINEG^^^300017985")
    rct = segment("PRT||UC||RCT^^participation|801234567897^Hoda^Adam")
    person = v2.sender_of([rct, prt])
    assert (person.ids[0].root, person.ids[0].extension) == ("1.2.250.1.71.4.2.1", "801234564895")
    assert person.organization.ids[0].extension == "1300017985"

"""A document's security labels as sent (gateway/access/rules.py, applied_labels): a visibility
label is applied or refused, never kept and ignored; and those a replacement keeps of the
documents it replaces (with_replaced_masking)."""
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.access.rules import (KEPT_BY_REPLACEMENT, VISIBILITY_SYSTEMS, applied_labels, visibility_codes,
                                  with_replaced_masking)
from gateway.mapping import codes
from gateway.refusal import Refused

CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
TRE_A07_OID = "urn:oid:1.2.250.1.213.1.1.4.13"


def test_tre_a07_by_its_oid_is_kept_under_its_canonical_url():
    sent = [{"coding": [{"system": CONFIDENTIALITY, "code": "N"}]},
            {"coding": [{"system": TRE_A07_OID, "code": "MASQUE_PS", "display": "Masqué"}], "text": "masqué"}]
    assert applied_labels(sent, "DocumentReference.securityLabel") == [
        sent[0], {"coding": [{"system": codes.VISIBILITY_SYSTEM, "code": "MASQUE_PS", "display": "Masqué"}],
                  "text": "masqué"}]


@pytest.mark.parametrize("coding, location", [
    ({"code": "INVISIBLE_PATIENT"}, "L[1].coding[0].system"),
    ({"system": CONFIDENTIALITY, "code": "MASQUE_PS"}, "L[1].coding[0].system"),
    ({"system": codes.VISIBILITY_SYSTEM, "code": "INVISIBLE_REP_LEGAUX"}, "L[1].coding[0]"),
    ({"system": TRE_A07_OID, "code": "MASQUE_PSOCIAL"}, "L[1].coding[0]"),
    ({"system": codes.VISIBILITY_SYSTEM, "code": "masque_ps"}, "L[1].coding[0]"),
])
def test_a_visibility_label_it_cannot_apply_is_refused_where_it_is(coding, location):
    with pytest.raises(Refused) as refused:
        applied_labels([{"coding": [{"system": CONFIDENTIALITY, "code": "N"}]}, {"coding": [coding]}], "L")
    assert refused.value.location == location and refused.value.status == 422


label_codes = st.sampled_from([*codes.VISIBILITY_DISPLAYS, "INVISIBLE_REP_LEGAUX", "MASQUE_PT", "N", "R", "X"])
systems = st.sampled_from([*VISIBILITY_SYSTEMS, CONFIDENTIALITY, "http://example.org/labels", None])
codings = st.builds(lambda system, code: {**({"system": system} if system else {}), "code": code}, systems, label_codes)


@given(st.lists(st.builds(lambda c: {"coding": c}, st.lists(codings, max_size=3)), max_size=4))
def test_every_label_is_applied_as_it_reads_or_refused(labels):
    """Kept, the labels apply exactly the visibility codes sent under TRE_A07 (by either name);
    refused, one of them is a visibility code the rules would not have applied."""
    sent = {(c.get("system"), c["code"]) for label in labels for c in label["coding"]}
    try:
        kept = applied_labels(labels, "L")
    except Refused:
        assert any((system in VISIBILITY_SYSTEMS) != (code in codes.VISIBILITY_DISPLAYS)
                   or (system not in VISIBILITY_SYSTEMS and code == "INVISIBLE_REP_LEGAUX") for system, code in sent)
        return
    assert visibility_codes({"securityLabel": kept}) == {code for system, code in sent if system in VISIBILITY_SYSTEMS}
    assert len(kept) == len(labels)


def label(system: str, code: str) -> dict:
    return {"coding": [{"system": system, "code": code}]}


@given(st.sets(st.sampled_from(["MASQUE_PS", "INVISIBLE_PATIENT", "INVISIBLE_REPRESENTANTS_LEGAUX"])),
       st.lists(st.sets(st.sampled_from(["MASQUE_PS", "INVISIBLE_PATIENT", "INVISIBLE_REPRESENTANTS_LEGAUX"])),
                max_size=3))
def test_a_replacement_keeps_the_masking_of_what_it_replaces(own, replaced):
    """with_replaced_masking: the replacement holds its own labels, and the MASQUE_PS and
    INVISIBLE_REPRESENTANTS_LEGAUX of any document it replaces, each once, before its own;
    INVISIBLE_PATIENT only where it states it."""
    docref = {"securityLabel": [label(codes.VISIBILITY_SYSTEM, code) for code in sorted(own)]
              + [label(CONFIDENTIALITY, "N")]}
    previous = [{"securityLabel": [label(codes.VISIBILITY_SYSTEM, code) for code in sorted(held)]
                 + [label(CONFIDENTIALITY, "R")]} for held in replaced]
    kept = with_replaced_masking(docref, previous)
    inherited = set().union(*replaced) & set(KEPT_BY_REPLACEMENT)
    assert visibility_codes(kept) == own | inherited
    assert kept["securityLabel"][len(inherited - own):] == docref["securityLabel"]
    assert len(kept["securityLabel"]) == len(docref["securityLabel"]) + len(inherited - own)

"""Every CDA of the third-party corpus is ingested with its header's values, or refused with a reason."""
from pathlib import Path

import pytest
from lxml import etree

from conftest import REPORT, attend_all
from gateway.mapping.dates import ts_to_fhir
from gateway.mapping.document import author_idnatps

NS = {"h": "urn:hl7-org:v3"}


def _clinical_document(data: bytes):
    root = etree.fromstring(data, etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=True))
    return root if root.tag == "{urn:hl7-org:v3}ClinicalDocument" else root.find(".//h:ClinicalDocument", NS)


def expected_fields(data: bytes) -> dict:
    """The header values, read independently of the gateway's own reader."""
    cd = _clinical_document(data)
    attr = lambda path, name: cd.find(path, NS).get(name) if cd.find(path, NS) is not None else None  # noqa: E731
    ins = [i for i in cd.findall("h:recordTarget/h:patientRole/h:id", NS) if i.get("root").startswith("1.2.250.1.213.1.4.")][0]
    low = attr("h:documentationOf/h:serviceEvent/h:effectiveTime/h:low", "value")
    return {
        "unique_id": attr("h:id", "root"),
        "type": attr("h:code", "code"),
        "creation": ts_to_fhir(attr("h:effectiveTime", "value")),
        "confidentiality": attr("h:confidentialityCode", "code"),
        "language": attr("h:languageCode", "code"),
        "ins": ins.get("extension"),
        "author": attr("h:author/h:assignedAuthor/h:id", "extension"),
        "custodian": attr("h:custodian/h:assignedCustodian/h:representedCustodianOrganization/h:id", "extension"),
        "facility": attr("h:componentOf/h:encompassingEncounter/h:location/h:healthCareFacility/h:code", "code"),
        "period_start": ts_to_fhir(low) if low else None,
        "title": " ".join("".join(cd.find("h:title", NS).itertext()).split()) if cd.find("h:title", NS) is not None else None,
    }


@pytest.fixture
def backend():
    """The tally is about reading documents, not storage: it runs once, on SQLite."""
    return "sqlite"


def test_corpus(client, corpus_dir: Path):
    tally = {"ingested": [], "refused": []}
    for path in sorted((corpus_dir / "cda").glob("*.xml")):
        data = path.read_bytes()
        response = client.post("/cda", data=data, headers={"Content-Type": "application/xml"})
        if response.status_code in (200, 201):
            doc = response.json
            attend_all(client.application.config["ENGINE"])
            want = expected_fields(data)
            assert doc["masterIdentifier"]["value"] == f"urn:oid:{want['unique_id']}", path.name
            assert doc["type"]["coding"][0]["code"] == want["type"], path.name
            assert doc["content"][0]["attachment"]["creation"] == want["creation"], path.name
            assert doc["securityLabel"][0]["coding"][0]["code"] == want["confidentiality"], path.name
            assert doc["content"][0]["attachment"].get("language") == want["language"], path.name
            assert doc["content"][0]["attachment"]["title"] == want["title"], path.name
            if want["period_start"]:
                assert doc["context"]["period"]["start"] == want["period_start"], path.name
            if want["facility"]:
                assert doc["context"]["facilityType"]["coding"][0]["code"] == want["facility"], path.name
            patient = client.get(f"/fhir/{doc['subject']['reference']}").json
            assert want["ins"] in [i["value"] for i in patient["identifier"]], path.name
            # The author is the document's own contained copy (PDSm), as its header names them.
            assert want["author"] in author_idnatps(doc), path.name
            custodian = client.get(f"/fhir/{doc['custodian']['reference']}").json
            assert want["custodian"] in [i["value"] for i in custodian["identifier"]], path.name
            binary = client.get(doc["content"][0]["attachment"]["url"].replace("http://gateway.test", ""))
            assert binary.data == data, path.name
            tally["ingested"].append(path.name)
        else:
            assert 400 <= response.status_code < 500, (path.name, response.status_code)
            issue = response.json["issue"][0]
            assert issue["diagnostics"] and issue["expression"], path.name
            tally["refused"].append(f"{path.name}: {issue['expression'][0]}: {issue['diagnostics'][:90]}")
    REPORT.append(f"corpus CDA: {len(tally['ingested'])} ingested (fields checked), {len(tally['refused'])} refused")
    REPORT.extend(f"  refused {line}" for line in tally["refused"])
    # The French documents (the ANS's CI-SIS examples, `fr_`) are what the DMP takes: every one is
    # ingested. The others are refused for having no INS, or for not being a ClinicalDocument.
    assert not [line for line in tally["refused"] if line.startswith("fr_")], tally["refused"]
    assert tally["ingested"], "no corpus document was ingested"

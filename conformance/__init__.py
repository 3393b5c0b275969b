"""The conformance kit: cases (data in `cases/`) that integration testers run against a gateway
with `gateway-conformance`, over MLLP and FHIR, offline."""

"""Our sample CDA documents pass the ANS CI-SIS schematron of their content model, compiled from
the ANS folder as published (`../shared/reference/ans-cda-validation/schematrons`, ISO skeleton in
`moteur/`) by the conformance kit, exactly as a tester runs it with `--schematron-dir`."""
import os
from pathlib import Path

import pytest

from conftest import REPORT, SAMPLES

ANS = Path(os.environ.get("GATEWAY_ANS_SCHEMATRONS", Path(__file__).resolve().parents[3] / "shared" / "reference"
                          / "ans-cda-validation" / "schematrons"))
# The samples of a CI-SIS content model; the others are N1 (XDS-SD) documents or have no model of
# their own, and only the header rules the gateway checks apply to them.
MODELS = {"ldl-ses-martin.xml": "CI-SIS_LDL-SES_2022.01.sch",
          "cr-imagerie-irm-lefevre.xml": "CI-SIS_IMG-CR-IMG_2024.01.sch",
          "cr-imagerie-scanner-garnier.xml": "CI-SIS_IMG-CR-IMG_2024.01.sch",
          "cr-imagerie-irm-lefevre-v2.xml": "CI-SIS_IMG-CR-IMG_2024.01.sch",
          "cr-biologie-martin.xml": "CI-SIS_BIO-CR-BIO_2024.01.sch"}


def test_samples_pass_the_schematron_of_their_model():
    if not ANS.is_dir():
        pytest.skip(f"the ANS schematrons are not present at {ANS}")
    from conformance.schematron import Schematrons

    schematrons = Schematrons(ANS)
    checked = {}
    for folder in ("cda", "replacement", "signed"):
        for path in sorted((SAMPLES / folder).glob("*.xml")):
            data = path.read_bytes()
            applied = [p.name for p in schematrons.applicable(data)]
            assert applied == ([MODELS[path.name]] if path.name in MODELS else []), path.name
            assert schematrons.failures(data) == [], path.name
            checked[path.name] = applied
    REPORT.append(f"CI-SIS schematrons: {sum(1 for a in checked.values() if a)} samples of a content model, "
                  f"0 failed asserts; {sum(1 for a in checked.values() if not a)} without a model")


def test_a_folder_given_relative_to_the_working_directory_is_read(monkeypatch):
    """A tester types `--schematron-dir ../shared/...`: the skeleton and the value sets are found
    from there whatever folder saxon reads relative to."""
    if not ANS.is_dir():
        pytest.skip(f"the ANS schematrons are not present at {ANS}")
    from conformance.schematron import Schematrons

    monkeypatch.chdir(SAMPLES)
    schematrons = Schematrons(Path(os.path.relpath(ANS)))
    for name in ("ldl-ses-martin.xml", "cr-biologie-martin.xml"):
        assert schematrons.failures((SAMPLES / "cda" / name).read_bytes()) == [], name

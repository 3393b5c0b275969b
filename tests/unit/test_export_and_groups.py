"""The signed manifest of a record's copy, checked offline; the DMP's document groups."""
import hashlib
import io
import zipfile

import pytest

from gateway.mapping.groups import group_of, grouped
from gateway.services.export import MANIFEST, _signed_manifest, verify_export
from gateway.signature import make_test_pki


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    directory = tmp_path_factory.mktemp("export-pki")
    make_test_pki(directory)
    return directory


def signed_manifest(files: dict[str, bytes], keys) -> bytes:
    return _signed_manifest({name: (len(data), hashlib.sha256(data).hexdigest()) for name, data in files.items()}, "p1",
                            (keys / "signer-key.pem").read_bytes(), (keys / "signer.pem").read_bytes())


def archive(files: dict[str, bytes], keys, *, manifest: bytes | None = None, extra: dict | None = None) -> bytes:
    signed = manifest or signed_manifest(files, keys)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, data in {**files, **(extra or {}), MANIFEST: signed}.items():
            z.writestr(name, data)
    return out.getvalue()


FILES = {"bundle.json": b"{}", "documents/001-a.xml": b"<a/>", "documents/002-b.pdf": b"%PDF-1.4"}


def test_an_untouched_copy_verifies(keys):
    report = verify_export(archive(FILES, keys), [keys / "ca.pem"])
    assert report.valid and report.files == 3


def test_each_altered_missing_or_added_file_is_named(keys):
    signed = signed_manifest(FILES, keys)
    changed = {**FILES, "documents/001-a.xml": b"<b/>"}
    del changed["documents/002-b.pdf"]
    report = verify_export(archive(changed, keys, manifest=signed, extra={"documents/003-c.txt": b"x"}),
                           [keys / "ca.pem"])
    assert not report.valid and report.signature is None
    assert report.altered == ["documents/001-a.xml"] and report.missing == ["documents/002-b.pdf"]
    assert report.unexpected == ["documents/003-c.txt"]


def test_an_edited_manifest_or_another_authority_fails_the_signature(keys, tmp_path):
    signed = signed_manifest(FILES, keys)
    forged = signed.replace(b'name="bundle.json"', b'name="bundle.jsom"')
    assert verify_export(archive(FILES, keys, manifest=forged), [keys / "ca.pem"]).signature
    make_test_pki(tmp_path)
    assert verify_export(archive(FILES, keys), [tmp_path / "ca.pem"]).signature
    assert verify_export(b"not a zip", [keys / "ca.pem"]).signature == "the file is not a ZIP archive"


def doc(class_code: str, type_code: str = "x", date: str = "2026-01-01") -> dict:
    return {"type": {"coding": [{"code": type_code}]}, "category": [{"coding": [{"code": class_code}]}], "date": date}


def test_documents_fall_into_the_dmp_groups():
    assert group_of(doc("11")) == "synthese"
    assert group_of(doc("10", "11502-2")) == "biologie"      # a lab report is a compte rendu, shown apart
    assert group_of(doc("10", "87273-9")) == "prevention"
    assert group_of(doc("10")) == "comptes-rendus"
    assert group_of(doc("31")) == "imagerie" and group_of(doc("42")) == "traitements"
    assert group_of(doc("90")) == "espace-personnel" and group_of({}) == "autres"
    assert group_of(doc("urn:oid:1.3.6.1.4.1.19376.1.2.1.1.1", "E1762")) is None   # a DSG signature
    groups = grouped([doc("31", date="2026-01-01"), doc("11"), doc("31", date="2026-02-01"),
                      doc("urn:oid:1.3.6.1.4.1.19376.1.2.1.1.1")])
    assert [key for key, _, _ in groups] == ["synthese", "imagerie"]
    assert [d["date"] for d in groups[1][2]] == ["2026-02-01", "2026-01-01"]

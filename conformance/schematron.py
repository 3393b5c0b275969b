"""Optional CDA validation with schematrons the tester provides (`--schematron-dir`): each
compiled schematron (an XSLT producing SVRL, `*.xsl`/`*.xslt`) runs with saxonche on every CDA
document a case sends and expects accepted; a failed assertion fails the case. Schematrons
delivered as `.sch` are compiled to XSLT first with the ISO skeleton or SchXslt."""
from __future__ import annotations

from pathlib import Path

from lxml import etree

SVRL = "http://purl.oclc.org/dsdl/svrl"


class Schematrons:
    def __init__(self, directory: Path):
        from saxonche import PySaxonProcessor   # optional dependency: pip install saxonche

        self.paths = sorted(p for p in directory.iterdir() if p.suffix in (".xsl", ".xslt"))
        if not self.paths:
            raise ValueError(f"{directory}: no compiled schematron (*.xsl, *.xslt)")
        self.processor = PySaxonProcessor(license=False)
        compiler = self.processor.new_xslt30_processor()
        self.executables = [(p.name, compiler.compile_stylesheet(stylesheet_file=str(p))) for p in self.paths]

    def failures(self, document: bytes) -> list[str]:
        """'schematron: location: message' for each failed assertion."""
        node = self.processor.parse_xml(xml_text=document.decode("utf-8"))
        out = []
        for name, executable in self.executables:
            report = etree.fromstring(executable.transform_to_string(xdm_node=node).encode())
            for failed in report.iter(f"{{{SVRL}}}failed-assert"):
                text = " ".join("".join(failed.itertext()).split())
                out.append(f"{name}: {failed.get('location', '')}: {text}")
        return out


def is_clinical_document(data: bytes) -> bool:
    return b"<ClinicalDocument" in data[:4096]

"""Optional CDA validation with the schematrons the tester gives (`--schematron-dir`), run with
saxonche on every CDA document a case sends and expects accepted; a failed assertion fails the case.

The folder is either compiled schematrons (XSLT producing SVRL, `*.xsl`/`*.xslt`), every one of
which holds every document; or the ANS CI-SIS folder as published (`schematrons/` of
TestContenuCDA-3-0): its model schematrons (`CI-SIS_<MODEL>_<VERSION>.sch`) are compiled with the ISO
skeleton shipped in its `moteur/`, and each document is held to the one of its content model: the
model template (1.2.250.1.213.1.1.1.*) its schematron names, at the version the file name and the
document's templateId extension both give. A document of no known model is held to none."""
from __future__ import annotations

import re
from pathlib import Path

from lxml import etree

SVRL = "http://purl.oclc.org/dsdl/svrl"
HL7 = "{urn:hl7-org:v3}"
SKELETON = ("iso_dsdl_include.xsl", "iso_abstract_expand.xsl", "iso_svrl_for_xslt2.xsl")
MODEL_TEMPLATE = re.compile(r"1\.2\.250\.1\.213\.1\.1\.1\.\d+")
MODEL_FILE = re.compile(r"^CI-SIS_.+_(\d{4}\.\d{2})\.sch$")


class Schematrons:
    def __init__(self, directory: Path):
        from saxonche import PySaxonProcessor   # optional dependency: pip install saxonche

        self.processor = PySaxonProcessor(license=False)
        self.compiler = self.processor.new_xslt30_processor()
        # Absolute: saxon reads a relative path from its own working folder, which each model's
        # compilation moves to that model's folder (its value sets are read from there).
        directory = directory.resolve()
        if not directory.is_dir():
            raise ValueError(f"--schematron-dir {directory}: no such folder")
        self.models: dict[tuple[str, str], Path] = {}
        self.compiled: dict[Path, object] = {}
        if (directory / "moteur" / SKELETON[-1]).exists():
            self._index(directory)
            if not self.models:
                raise ValueError(f"{directory}: no CI-SIS model schematron (CI-SIS_<MODEL>_<VERSION>.sch)")
            self.paths = []
        else:
            self.paths = sorted(p for p in directory.iterdir() if p.suffix in (".xsl", ".xslt"))
            if not self.paths:
                raise ValueError(f"{directory}: no compiled schematron (*.xsl, *.xslt) and no ISO skeleton in moteur/")
            self.compiled = {p: self.compiler.compile_stylesheet(stylesheet_file=str(p)) for p in self.paths}
        self.skeleton = directory / "moteur"

    def _index(self, directory: Path) -> None:
        """(model template, version) -> its schematron, from each file and the files it includes."""
        for path in sorted(directory.glob("CI-SIS_*.sch")):
            version = MODEL_FILE.match(path.name)
            if version is None:
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
            for href in re.findall(r'href="([^"]+\.sch)"', text):
                included = directory / href
                if included.is_file():
                    text += included.read_text(encoding="utf-8", errors="replace")
            for root in set(MODEL_TEMPLATE.findall(text)):
                self.models[(root, version.group(1))] = path

    def _compiled(self, path: Path):
        if path not in self.compiled:
            step = self.processor.parse_xml(xml_file_name=str(path))
            for name in SKELETON:
                stylesheet = self.compiler.compile_stylesheet(stylesheet_file=str(self.skeleton / name))
                text = stylesheet.transform_to_string(xdm_node=step)
                step = self.processor.parse_xml(xml_text=text)
            # The value sets are read relative to the schematron's own folder.
            self.compiler.set_cwd(str(path.parent) + "/")
            self.compiled[path] = self.compiler.compile_stylesheet(stylesheet_text=text)
        return self.compiled[path]

    def applicable(self, document: bytes) -> list[Path]:
        """The schematrons a document is held to."""
        if self.paths:
            return self.paths
        root = etree.fromstring(document, etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False))
        templates = [(t.get("root"), t.get("extension")) for t in root.iter(f"{HL7}templateId")
                     if t.getparent() is root]
        return [self.models[key] for key in templates if key in self.models]

    def failures(self, document: bytes) -> list[str]:
        """'schematron: location: message' for each failed assertion."""
        node = self.processor.parse_xml(xml_text=document.decode("utf-8"))
        out = []
        for path in self.applicable(document):
            report = etree.fromstring(self._compiled(path).transform_to_string(xdm_node=node).encode())
            for failed in report.iter(f"{{{SVRL}}}failed-assert"):
                text = " ".join("".join(failed.itertext()).split())
                out.append(f"{path.name}: {failed.get('location', '')}: {text}")
        return out


def is_clinical_document(data: bytes) -> bool:
    return b"<ClinicalDocument" in data[:4096]

"""Running cases: each step sends its input (over MLLP or HTTP) and checks its answer against the
case's expectations; the first unmet expectation fails the case with a message saying what was
expected and what came back, and every exchange is kept for the report.

The kit frames MLLP and reads ACKs itself rather than with the gateway's own MLLP and ER7 code:
a reading shared with the implementation under test would share its mistakes."""
from __future__ import annotations

import json
import os
import re
import socket
import ssl
import subprocess
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable
from urllib.parse import urlencode

import requests

from .model import Case, CaseError, Step
from .schematron import is_clinical_document
from .values import case_variables, fill, fill_value, pick

START, END = b"\x0b", b"\x1c\x0d"
DEFAULT_IDENTITY = {"role": "system", "sub": "conformance-kit"}
# --token-command runs once per identity, and nearly every case acts as one of its own (a patient
# of its own): 107 runs in a whole run, 25 s of its 32 s when each case waited for its command
# (`gateway token issue` takes 0.23 s). The commands for the identities of the next CASES_AHEAD
# cases run while a case runs, this many at once.
TOKEN_COMMANDS_AT_ONCE = min(4, os.cpu_count() or 1)
CASES_AHEAD = 8


class Unmet(AssertionError):
    """An expectation the gateway did not meet."""


@dataclass
class Exchange:
    step: int
    request: str
    response: str


@dataclass
class CaseResult:
    case: Case
    status: str                  # passed | failed | skipped | error
    message: str = ""
    seconds: float = 0.0
    exchanges: list[Exchange] = field(default_factory=list)


class TokenSource:
    """Bearer tokens: one fixed token for every request, or a command that prints one for each
    identity (it gets --role ROLE and, when set, --sub, --patient, --purpose, --org), or, from
    Python, a function of the identity."""

    def __init__(self, token: str | None = None, command: str | None = None,
                 issuer: Callable[[dict], str] | None = None):
        self.token, self.command, self.issuer = token, command, issuer
        self._tokens: dict[tuple, Future[str]] = {}
        self._commands: ThreadPoolExecutor | None = None

    @property
    def several_identities(self) -> bool:
        return self.command is not None or self.issuer is not None

    def __call__(self, identity: dict) -> str | None:
        if self.issuer is not None:
            return self.issuer(identity)
        if self.command is None:
            return self.token
        return self._asked(identity).result()

    def ahead(self, identities: Iterable[dict]) -> None:
        """Start the command for identities whose tokens will be asked for, each once."""
        if self.command is not None:
            for identity in identities:
                self._asked(identity)

    def close(self) -> None:
        """Stop the commands not started yet (the run ended, or was interrupted); the tokens
        already given are kept for a next run."""
        if self._commands is not None:
            self._commands.shutdown(wait=False, cancel_futures=True)
            self._commands = None
            self._tokens = {key: token for key, token in self._tokens.items()
                            if token.done() and not token.cancelled() and token.exception() is None}

    def _asked(self, identity: dict) -> Future[str]:
        key = tuple(sorted(identity.items()))
        if key not in self._tokens:
            if self._commands is None:
                self._commands = ThreadPoolExecutor(TOKEN_COMMANDS_AT_ONCE, thread_name_prefix="token-command")
            self._tokens[key] = self._commands.submit(self._run, identity)
        return self._tokens[key]

    def _run(self, identity: dict) -> str:
        args = ["--role", identity["role"]]
        for name in ("sub", "patient", "purpose", "org", "name"):
            if identity.get(name):
                args += [f"--{name}", identity[name]]
        try:
            done = subprocess.run(self.command.split() + args, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise CaseError(f"--token-command could not run: {exc}") from None
        if done.returncode != 0 or not done.stdout.strip():
            said = done.stderr.strip()[-300:] or "it printed no token"
            raise CaseError(f"--token-command failed for {identity} (exit status {done.returncode}): {said}")
        return done.stdout.strip().splitlines()[-1].strip()


@dataclass(frozen=True)
class Tls:
    """TLS towards the gateway: HTTPS as --fhir-base's scheme says, MLLP when `mllp` is set; the
    gateway's certificate checked against `ca` (the system's authorities without one), and the
    kit's own certificate given to a gateway that asks for one (mutual TLS)."""
    mllp: bool = False
    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    def context(self) -> ssl.SSLContext:
        """Raises OSError or ssl.SSLError for a file that cannot be read or is no PEM of its kind."""
        context = ssl.create_default_context(cafile=self.ca)
        if self.cert:
            context.load_cert_chain(self.cert, self.key)
        return context

    def requests_options(self) -> dict:
        return {"verify": self.ca or True, "cert": (self.cert, self.key) if self.key else self.cert}


@dataclass
class Target:
    fhir_base: str
    mllp: tuple[str, int] | None = None
    tokens: TokenSource = field(default_factory=TokenSource)
    timeout: float = 30.0
    schematrons: object | None = None   # schematron.Schematrons, when the tester gives some
    tls: Tls = field(default_factory=Tls)

    def mllp_connection(self) -> socket.socket:
        """A connection to the MLLP listener, over TLS when asked (the handshake done)."""
        host, port = self.mllp
        sock = socket.create_connection((host, port), timeout=self.timeout)
        if not self.tls.mllp:
            return sock
        try:
            return self.tls.context().wrap_socket(sock, server_hostname=host)
        except BaseException:
            sock.close()
            raise

    @property
    def gateway_root(self) -> str | None:
        """This gateway's own endpoints (/cda, /hl7v2) live beside /fhir."""
        base = self.fhir_base.rstrip("/")
        return base[: -len("/fhir")] if base.endswith("/fhir") else None


def unreachable(target: Target, cases: list[Case]) -> list[str]:
    """What keeps the run from starting, each in a sentence: a FHIR base with no R4 server's
    CapabilityStatement at its /metadata, an MLLP listener the HL7v2 cases need that accepts no
    connection, a token command that gives no token. Each would fail every case with one message."""
    problems = []
    headers = {"Accept": "application/fhir+json"}
    try:
        token = target.tokens(DEFAULT_IDENTITY)
    except CaseError as exc:
        problems.append(str(exc))
    else:
        if token:   # a server may keep its CapabilityStatement for those signed in
            headers["Authorization"] = f"Bearer {token}"
    url = f"{target.fhir_base.rstrip('/')}/metadata"
    try:
        answer = requests.get(url, headers=headers, timeout=target.timeout, **target.tls.requests_options())
    except requests.RequestException as exc:
        problems.append(f"cannot reach the FHIR server: GET {url}: {exc}")
    else:
        try:
            statement = answer.json() if answer.status_code == 200 else {}
        except ValueError:
            statement = {}
        if not isinstance(statement, dict) or statement.get("resourceType") != "CapabilityStatement":
            problems.append(f"GET {url} answered {answer.status_code}, not a FHIR CapabilityStatement: --fhir-base "
                            "is the FHIR base URL, the one /metadata is under (e.g. http://127.0.0.1:8080/fhir)")
        elif not str(statement.get("fhirVersion", "")).startswith("4.0."):
            problems.append(f"the server at {target.fhir_base} declares FHIR {statement.get('fhirVersion')}: these "
                            "cases are FHIR 4.0.1 (R4)")
    needs = {need for case in cases for need in case.requires}
    if target.mllp is not None and "mllp" in needs:
        try:
            target.mllp_connection().close()
        except OSError as exc:   # ssl.SSLError is one: a certificate not trusted, a handshake refused
            over = " over TLS" if target.tls.mllp else ""
            problems.append(f"cannot reach the MLLP listener at {target.mllp[0]}:{target.mllp[1]}{over}: {exc}")
    return problems


def missing_capabilities(case: Case, target: Target) -> list[str]:
    have = {"mllp": target.mllp is not None, "gateway": target.gateway_root is not None,
            "roles": target.tokens.several_identities}
    return [need for need in case.requires if not have[need]]


class CaseRun:
    def __init__(self, case: Case, target: Target, seed: int | None = None):
        self.case, self.target = case, target
        self.variables = case_variables(seed)
        self.exchanges: list[Exchange] = []
        self.session = requests.Session()
        self.documents_sent: list[tuple[str, bytes]] = []   # the CDAs of the step being run

    def read_file(self, name: str, charset: str | None = None) -> bytes:
        """An input file, its variables filled in, in the character set `charset` names (an HTTP
        body's Content-Type) or its own (a message's MSH-18)."""
        path = self.case.file(name)
        data = path.read_bytes()
        if path.suffix in (".xml", ".hl7", ".json", ".txt"):
            text = data.decode("utf-8")
            data = fill(text, self.variables, self.read_file).encode(charset or self._encoding(text))
        if path.suffix == ".xml" and is_clinical_document(data):
            self.documents_sent.append((name, data))
        return data

    def identities(self) -> list[dict]:
        """The identities the case's HTTP steps act as, as far as its variables name them before
        it runs: one that names a value a step captures is asked for when that step runs."""
        found = []
        for step in self.case.steps:
            if step.action == "mllp" or step.spec.get("anonymous"):
                continue
            try:
                found.append({**DEFAULT_IDENTITY, **fill_value(step.spec.get("as", {}), self.variables, _no_file)})
            except KeyError:
                continue
        return found

    @staticmethod
    def _encoding(text: str) -> str:
        # An HL7v2 message declaring 8859/15 (MSH-18) is sent in that character set.
        return "iso-8859-15" if text.startswith("MSH") and "|8859/15|" in text.split("\r", 1)[0] else "utf-8"

    def run(self) -> None:
        for number, step in enumerate(self.case.steps, 1):
            self.documents_sent = []
            spec = fill_value(step.spec, self.variables, self.read_file)
            try:
                if step.action == "mllp":
                    self._mllp(number, spec)
                else:
                    self._http(number, step, spec)
                if self.target.schematrons is not None and _expects_acceptance(spec):
                    for name, document in self.documents_sent:
                        failed = self.target.schematrons.failures(document)
                        if failed:
                            raise Unmet(f"{name} does not pass the schematrons: {'; '.join(failed[:5])}")
            except Unmet as unmet:
                raise Unmet(f"step {number}: {unmet}") from None

    # -- MLLP -------------------------------------------------------------------------------

    def _mllp(self, number: int, spec: dict) -> None:
        message = self.read_file(spec["file"]) if "file" in spec else spec["message"].encode()
        message = message.replace(b"\r\n", b"\r").replace(b"\n", b"\r").rstrip(b"\r") + b"\r"
        framed = START + message + END if spec.get("framing", "mllp") == "mllp" else message
        chunks = [framed]
        if spec.get("chunks"):
            size = max(1, len(framed) // int(spec["chunks"]))
            chunks = [framed[i:i + size] for i in range(0, len(framed), size)]
        for _ in range(int(spec.get("times", 1))):
            ack = self._send(chunks, expect_answer=not spec.get("expect", {}).get("no_ack"))
            self.exchanges.append(Exchange(number, message.decode("utf-8", "replace").replace("\r", "\n"),
                                           (ack or b"(no answer)").decode("utf-8", "replace").replace("\r", "\n")))
        self._check_ack(ack, message, spec.get("expect", {}))

    def _send(self, chunks: list[bytes], expect_answer: bool) -> bytes | None:
        with self.target.mllp_connection() as sock:
            for chunk in chunks:
                sock.sendall(chunk)
                time.sleep(0.01 if len(chunks) > 1 else 0)
            sock.settimeout(self.target.timeout if expect_answer else 2.0)
            received = b""
            try:
                while END not in received:
                    data = sock.recv(65536)
                    if not data:
                        break
                    received += data
            except socket.timeout:
                if expect_answer:
                    raise Unmet(f"no ACK within {self.target.timeout:.0f} s") from None
        if not received:
            return None
        return received.strip(START).split(END)[0]

    @staticmethod
    def _check_ack(ack: bytes | None, message: bytes, expect: dict) -> None:
        if expect.get("no_ack"):
            if ack:
                raise Unmet(f"expected no ACK, got {ack[:200]!r}")
            return
        if ack is None:
            raise Unmet("the connection closed without an ACK")
        if "acks" in expect:
            _check_batch_answer(ack, message, expect["acks"])
            return
        segments = {line.split(b"|", 1)[0].decode(): line.decode("utf-8", "replace").split("|")
                    for line in ack.split(b"\r") if line}
        msa = segments.get("MSA")
        if msa is None:
            raise Unmet(f"the answer has no MSA segment: {ack[:200]!r}")
        if "ack" in expect:
            wanted = expect["ack"] if isinstance(expect["ack"], list) else [expect["ack"]]
            if msa[1] not in wanted:
                err = "|".join(segments.get("ERR", []))
                raise Unmet(f"expected ACK {' or '.join(wanted)}, got {msa[1]}" + (f" ({err})" if err else ""))
        control_id = message.split(b"\r", 1)[0].decode("utf-8", "replace").split("|")
        if len(control_id) > 9 and len(msa) > 2 and msa[2] != control_id[9]:
            raise Unmet(f"MSA-2 is {msa[2]!r}, not the message's MSH-10 {control_id[9]!r}")
        if "err" in expect:
            err = segments.get("ERR")
            codes = err[3].split("^")[0] if err and len(err) > 3 else None
            if codes not in expect["err"]:
                raise Unmet(f"expected ERR-3 {' or '.join(expect['err'])}, got {codes}")

    # -- HTTP ------------------------------------------------------------------------------

    def _url(self, spec: dict) -> str:
        if "root_path" in spec:
            return self.target.gateway_root + spec["root_path"]
        if "url_from" in spec:
            return self.variables[spec["url_from"]]
        path = spec.get("path", spec.get("resource", ""))
        url = self.target.fhir_base.rstrip("/") + "/" + path.lstrip("/")
        if spec.get("params"):
            url += ("&" if "?" in url else "?") + urlencode(list(_pairs(spec["params"])))
        return url

    def _http(self, number: int, step: Step, spec: dict) -> None:
        method = spec.get("method", "GET" if step.action == "search" else "POST").upper()
        url = self._url(spec)
        headers = {"Accept": spec.get("accept", "application/fhir+json")}
        identity = {**DEFAULT_IDENTITY, **spec.get("as", {})}
        if not spec.get("anonymous"):
            token = self.target.tokens(identity)
            if token:
                headers["Authorization"] = f"Bearer {token}"
        body = None
        if "file" in spec:
            charset = re.search(r"charset=([^;\s]+)", spec.get("content_type", ""), re.IGNORECASE)
            body = self.read_file(spec["file"], charset.group(1) if charset else None)
        elif "json" in spec:
            body = json.dumps(spec["json"], ensure_ascii=False).encode()
        elif "form" in spec:
            body = urlencode(list(_pairs(spec["form"]))).encode()
            spec.setdefault("content_type", "application/x-www-form-urlencoded")
        if body is not None:
            headers["Content-Type"] = spec.get("content_type", "application/fhir+json")
        # TLS's options with each request: a session's `verify` gives way to REQUESTS_CA_BUNDLE.
        response = self.session.request(method, url, data=body, headers=headers, timeout=self.target.timeout,
                                        **self.target.tls.requests_options())
        shown = body[:4000].decode("utf-8", "replace") if body else ""
        self.exchanges.append(Exchange(number, f"{method} {url}\nas {identity}\n\n{shown}",
                                       f"{response.status_code}\n{_headers(response)}\n\n{response.text[:8000]}"))
        self._check_http(response, spec.get("expect", {}), spec.get("capture", {}))

    def _check_http(self, response: requests.Response, expect: dict, capture: dict) -> None:
        wanted = expect.get("status", [200, 201])
        wanted = wanted if isinstance(wanted, list) else [wanted]
        if response.status_code not in wanted:
            raise Unmet(f"expected HTTP {' or '.join(map(str, wanted))}, got {response.status_code}: "
                        f"{_diagnostics(response)}")
        if "content_type" in expect and not response.headers.get("Content-Type", "").startswith(expect["content_type"]):
            raise Unmet(f"expected Content-Type {expect['content_type']}, got {response.headers.get('Content-Type')}")
        if "body_file" in expect and response.content != self.read_file(expect["body_file"]):
            raise Unmet(f"the bytes returned ({len(response.content)}) are not those of {expect['body_file']}")
        for name in expect.get("headers", []):
            if name not in response.headers:
                raise Unmet(f"expected a {name} header")
        document = None
        if expect.get("total") is not None or expect.get("json") or expect.get("ids") or capture:
            try:
                document = response.json()
            except ValueError:
                raise Unmet(f"expected JSON, got {response.text[:200]!r}") from None
        if expect.get("total") is not None and document.get("total") != expect["total"]:
            raise Unmet(f"expected total {expect['total']}, got {document.get('total')}")
        for assertion in expect.get("json", []):
            _check_json(document, assertion)
        ids = {e.get("resource", {}).get("id") for e in (document or {}).get("entry", [])}
        for key in expect.get("ids", {}).get("include", []):
            if key not in ids:
                raise Unmet(f"expected {key} among the results, got {sorted(i for i in ids if i)}")
        for key in expect.get("ids", {}).get("exclude", []):
            if key in ids:
                raise Unmet(f"{key} should not be among the results")
        for name, path in capture.items():
            found = pick(document, path)
            if not found:
                raise Unmet(f"nothing at {path} to capture as {name}")
            value = str(found[0])
            if path.endswith("reference") and "/" in value:
                value = value.rsplit("/", 1)[-1]
            self.variables[name] = value


def _check_batch_answer(answer: bytes, sent: bytes, wanted: list[str]) -> None:
    """An HL7 batch (FHS, BHS ... BTS, FTS) is answered by a batch: the ACK of each of its messages
    in order (MSA-1 as wanted, MSA-2 its MSH-10), each header echoing the one it answers in its
    field 12, each trailer counting what it holds."""
    lines = [line.decode("utf-8", "replace").split("|") for line in answer.split(b"\r") if line]
    sent_lines = [line.decode("utf-8", "replace").split("|") for line in sent.split(b"\r") if line]
    if not lines or lines[0][0] not in ("FHS", "BHS"):
        raise Unmet(f"expected a batch (FHS or BHS first), got {answer[:200]!r}")
    codes = [line[1] if len(line) > 1 else "" for line in lines if line[0] == "MSA"]
    if codes != wanted:
        errors = ["|".join(line) for line in lines if line[0] == "ERR"]
        raise Unmet(f"expected ACKs {', '.join(wanted)}, got {', '.join(codes) or 'none'}"
                    + (f" ({errors[0]})" if errors else ""))
    acked = [line[2] if len(line) > 2 else "" for line in lines if line[0] == "MSA"]
    control_ids = [line[9] if len(line) > 9 else "" for line in sent_lines if line[0] == "MSH"]
    if acked != control_ids:
        raise Unmet(f"the ACKs answer {acked}, not the messages' MSH-10 {control_ids}")
    for name in ("FHS", "BHS"):
        received = [line[10] if len(line) > 10 else "" for line in sent_lines if line[0] == name]
        echoed = [line[11] if len(line) > 11 else "" for line in lines if line[0] == name]
        if echoed != received:
            raise Unmet(f"{name}-12 of the answer is {echoed}, not the batch's {name}-11 {received}")
    trailers = [line[1] if len(line) > 1 else "" for line in lines if line[0] == "BTS"]
    if trailers and trailers != [str(len(codes))]:
        raise Unmet(f"BTS-1 of the answer is {trailers}, not the {len(codes)} ACKs it holds")


def _expects_acceptance(spec: dict) -> bool:
    """A step whose input is meant to be accepted: its documents are held to the schematrons."""
    expect = spec.get("expect", {})
    if "ack" in expect:
        wanted = expect["ack"] if isinstance(expect["ack"], list) else [expect["ack"]]
        return set(wanted) <= {"AA", "CA"}
    status = expect.get("status", [200, 201])
    return all(200 <= code < 300 for code in (status if isinstance(status, list) else [status]))


def _pairs(params: dict):
    for key, value in params.items():
        for item in value if isinstance(value, list) else [value]:
            yield key, item


def _headers(response: requests.Response) -> str:
    return "\n".join(f"{k}: {v}" for k, v in response.headers.items()
                     if k.lower() in ("content-type", "location", "etag", "www-authenticate"))


def _diagnostics(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    issues = [i.get("diagnostics", "") for i in body.get("issue", [])] if isinstance(body, dict) else []
    return "; ".join(issues)[:300] or response.text[:200]


def _check_json(document, assertion: dict) -> None:
    path = assertion["path"]
    found = pick(document, path)
    if "exists" in assertion and bool(found) != assertion["exists"]:
        raise Unmet(f"{path}: expected {'a value' if assertion['exists'] else 'nothing'}, got {found[:5]}")
    if "equals" in assertion and found != [assertion["equals"]] and not (found and all(v == assertion["equals"] for v in found)):
        raise Unmet(f"{path}: expected {assertion['equals']!r}, got {found[:5]}")
    if "contains" in assertion and assertion["contains"] not in found:
        raise Unmet(f"{path}: expected {assertion['contains']!r} among {found[:10]}")
    if "absent" in assertion and assertion["absent"] in found:
        raise Unmet(f"{path}: {assertion['absent']!r} should not be there")
    if "count" in assertion and len(found) != assertion["count"]:
        raise Unmet(f"{path}: expected {assertion['count']} values, got {len(found)}")
    if "matches" in assertion and not (found and all(re.search(assertion["matches"], str(v)) for v in found)):
        raise Unmet(f"{path}: expected values matching {assertion['matches']!r}, got {found[:5]}")


def _no_file(name: str, charset: str | None = None) -> bytes:
    raise KeyError(name)


def run_case(run: CaseRun) -> CaseResult:
    missing = missing_capabilities(run.case, run.target)
    if missing:
        return CaseResult(run.case, "skipped", f"needs {', '.join(missing)}")
    started = time.perf_counter()
    try:
        run.run()
        status, message = "passed", ""
    except Unmet as unmet:
        status, message = "failed", str(unmet)
    except (CaseError, KeyError) as exc:
        status, message = "error", f"the case cannot run: {exc}"
    except (requests.RequestException, OSError) as exc:
        status, message = "failed", f"could not reach the gateway: {exc}"
    return CaseResult(run.case, status, message, time.perf_counter() - started, run.exchanges)


def run_cases(cases: list[Case], target: Target, progress: Callable[[CaseResult], None] | None = None,
              seed: int | None = None) -> list[CaseResult]:
    runs = [CaseRun(case, target, None if seed is None else seed + index) for index, case in enumerate(cases)]
    results = []
    try:
        for index, run in enumerate(runs):
            # The first cases' identities at the start, then those of the case each one brings
            # into the window of CASES_AHEAD.
            for coming in runs[index + CASES_AHEAD - 1:index + CASES_AHEAD] if index else runs[:CASES_AHEAD]:
                if not missing_capabilities(coming.case, target):
                    target.tokens.ahead(coming.identities())
            result = run_case(run)
            results.append(result)
            if progress:
                progress(result)
    finally:
        target.tokens.close()
    return results

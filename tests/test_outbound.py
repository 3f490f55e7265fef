"""The SSRF-guarded outbound client and http(s) import sources, over real HTTP and HTTPS
on loopback: the deny list with its odd spellings, the allow-list, one DNS answer used for
the connection while the Host header and TLS name keep the URL's host, no redirects, size
limits, cleanup of partial files, and imports from a URL end to end.

DNS is the outside world: where a test needs a name to resolve to a given address it
replaces socket.getaddrinfo for that name only."""

from __future__ import annotations

import base64
import contextlib
import io
import ipaddress
import socket
import ssl
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openpyxl
import pytest
import sqlalchemy as sa
import trustme
from hypothesis import given
from hypothesis import strategies as st

from crmqueue.config import OutboundSettings, load_settings
from crmqueue.crm import schema
from crmqueue.crm.store import create_engine, init_db
from crmqueue.errors import ConfigError, PermanentError, RetryableError
from crmqueue.payloads import ImportPayload
from crmqueue.providers import http
from crmqueue.workers import import_export
from crmqueue.workers.import_export import Importer

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)
CSV = b"email,first_name,last_name\na@x.com,Ann,A\nb@x.com,Bob,B\n"


# --------------------------------------------------------------------------- servers


@dataclass
class Seen:
    path: str
    host: str | None
    authorization: str | None


Route = Callable[[BaseHTTPRequestHandler], None]


@dataclass
class Server:
    port: int
    routes: dict[str, Route]
    seen: list[Seen] = field(default_factory=list)
    server_names: list[str | None] = field(default_factory=list)  # TLS SNI, per handshake

    def url(self, path: str, host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    def paths(self) -> list[str]:
        return [s.path for s in self.seen]


def reply(status: int, body: bytes = b"", **headers: str) -> Route:
    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        for name, value in headers.items():
            handler.send_header(name.replace("_", "-"), value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return route


def chunked(total: int, chunk: int = 4096) -> Route:
    """`total` bytes with no Content-Length: the client can only count them."""

    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        sent = 0
        while sent < total:
            size = min(chunk, total - sent)
            handler.wfile.write(b"%x\r\n%s\r\n" % (size, b"x" * size))
            sent += size
        handler.wfile.write(b"0\r\n\r\n")

    return route


def announce(length: int, actual: bytes) -> Route:
    """Announce `length` bytes, send `actual` and hang up."""

    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(length))
        handler.end_headers()
        handler.wfile.write(actual)
        handler.close_connection = True

    return route


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Any

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer()

    def _answer(self) -> None:
        record: Server = self.server.record
        record.seen.append(
            Seen(self.path, self.headers.get("Host"), self.headers.get("Authorization"))
        )
        route = record.routes.get(self.path.split("?")[0], reply(404, b"no such route"))
        # The client may stop reading on purpose (size limits).
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            route(self)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that closes a kept-alive connection with bytes unread resets it (the
        # size-limit tests do so on purpose): not worth a traceback.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class TLSServer(QuietServer):
    """Handshakes in the request thread, so a refused handshake never stalls the server."""

    context: ssl.SSLContext

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            request = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        super().finish_request(request, client_address)


def serve(server_class: type[QuietServer] = QuietServer) -> Any:
    httpd = server_class(("127.0.0.1", 0), Handler)
    httpd.record = Server(port=httpd.server_address[1], routes={})  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    return httpd, thread


@pytest.fixture
def server() -> Iterator[Server]:
    httpd, thread = serve()
    yield httpd.record
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[list[str]]]:
    """Names to fake: name -> successive answers (the last one repeats). Every lookup of a
    faked name is counted in `dns["<name> lookups"]`."""
    answers: dict[str, list[list[str]]] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name not in answers:
            return real(host, port, *args, **kwargs)
        answers.setdefault(f"{name} lookups", []).append([])
        queue = answers[name]
        addresses = queue.pop(0) if len(queue) > 1 else queue[0]
        result = []
        for address in addresses:
            if ":" in address:
                result.append(
                    (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, int(port or 0), 0, 0))
                )
            else:
                result.append(
                    (socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, int(port or 0)))
                )
        return result

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*") if p.is_file()) if directory.exists() else []


# --------------------------------------------------------------------------- check_url


@pytest.mark.parametrize(
    "url",
    [
        # IPv4 families of the deny list
        "http://0.0.0.0/",
        "http://0.1.2.3/",
        "http://127.0.0.1/",
        "http://127.255.255.254/",
        "http://10.0.0.1/",
        "http://100.64.0.1/",
        "http://100.127.255.254/",
        "http://169.254.169.254/latest/meta-data/",
        "http://172.16.0.1/",
        "http://172.31.255.255/",
        "http://192.168.1.1/",
        "http://224.0.0.1/",
        "http://239.255.255.250/",
        "http://240.0.0.1/",
        "http://255.255.255.255/",
        "http://192.0.2.1/",  # documentation range: not global
        # IPv6 families
        "http://[::1]/",
        "http://[::]/",
        "http://[fc00::1]/",
        "http://[fd12:3456::1]/",
        "http://[fe80::1]/",
        "http://[ff02::1]/",
        # IPv4 inside IPv6
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:10.0.0.1]/",
        "http://[::ffff:169.254.169.254]/",
        "http://[::ffff:7f00:1]/",
        "http://[64:ff9b::10.0.0.1]/",  # NAT64
        "http://[2002:7f00:1::]/",  # 6to4 of 127.0.0.1
        "http://[::127.0.0.1]/",  # deprecated IPv4-compatible
        # spellings the C library reads as 127.0.0.1 (or 0.0.0.0)
        "http://0x7f000001/",
        "http://0X7F000001/",
        "http://2130706433/",
        "http://017700000001/",
        "http://0177.0.0.1/",
        "http://0x7f.0.0.1/",
        "http://127.1/",
        "http://127.0.1/",
        "http://0/",
        "http://127.0.0.1./",
        # ports, paths, credentials and upper case change nothing
        "https://127.0.0.1:8443/x?y=1",
        "HTTP://user:pw@127.0.0.1/",
    ],
)
def test_every_deny_list_family_is_refused(url: str) -> None:
    with pytest.raises(PermanentError, match="not allowed"):
        http.check_url(url)


@pytest.mark.parametrize(
    ("url", "addresses"),
    [
        ("http://8.8.8.8/", ["8.8.8.8"]),
        ("https://[2001:4860:4860::8888]:8443/x", ["2001:4860:4860::8888"]),
        ("http://[::ffff:8.8.8.8]/", ["::ffff:808:808"]),
        ("http://[64:ff9b::8.8.8.8]/", ["64:ff9b::808:808"]),
        ("http://0x08080808/", ["8.8.8.8"]),
    ],
)
def test_public_addresses_pass_without_a_lookup(url: str, addresses: list[str]) -> None:
    target = http.check_url(url)
    assert [str(a) for a in target.addresses] == addresses


def test_a_name_is_checked_by_every_address_it_resolves_to(
    dns: dict[str, list[list[str]]],
) -> None:
    with pytest.raises(PermanentError, match=r"host localhost \(127\.0\.0\.1\).*not allowed"):
        http.check_url("http://localhost:8080/")  # the real resolver
    dns["internal.test"] = [["10.1.2.3"]]
    with pytest.raises(PermanentError, match=r"internal\.test \(10\.1\.2\.3\)"):
        http.check_url("http://internal.test/")
    # One bad address among good ones is enough: a rebinding name may mix them.
    dns["mixed.test"] = [["8.8.8.8", "2001:4860:4860::8888", "fd00::1"]]
    with pytest.raises(PermanentError, match=r"mixed\.test \(fd00::1\)"):
        http.check_url("http://mixed.test/")
    dns["public.test"] = [["8.8.8.8", "2001:4860:4860::8888"]]
    target = http.check_url("https://public.test/")
    assert [str(a) for a in target.addresses] == ["8.8.8.8", "2001:4860:4860::8888"]
    assert (target.host_header, target.server_name) == ("public.test", "public.test")


def test_allowed_networks_open_exactly_those_networks(dns: dict[str, list[list[str]]]) -> None:
    assert http.check_url("http://127.0.0.1:9/", allowed_networks=LOOPBACK).addresses
    assert http.check_url("http://0x7f000001/", allowed_networks=LOOPBACK).addresses
    assert http.check_url("http://[::ffff:127.0.0.1]/", allowed_networks=LOOPBACK).addresses
    for url in ("http://10.0.0.1/", "http://[::1]/", "http://169.254.169.254/"):
        with pytest.raises(PermanentError, match="not allowed"):
            http.check_url(url, allowed_networks=LOOPBACK)
    dns["dual.test"] = [["127.0.0.1", "::1"]]
    with pytest.raises(PermanentError, match=r"\(::1\)"):
        http.check_url("http://dual.test/", allowed_networks=LOOPBACK)
    both = (*LOOPBACK, ipaddress.ip_network("::1/128"))
    assert len(http.check_url("http://dual.test/", allowed_networks=both).addresses) == 2


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/x", "only http and https"),
        ("file:///etc/passwd", "only http and https"),
        ("gopher://127.0.0.1:6379/_INFO", "only http and https"),
        ("//example.com/x", "only http and https"),
        ("http:///x", "no host"),
        ("http://example.com:99999/", "not a valid URL"),
        ("http://[fe80::1%25eth0]/", "zone"),
        ("http://[not-v6]/", "not a valid URL|not an IPv6 address"),
    ],
)
def test_malformed_urls_are_permanent(url: str, message: str) -> None:
    with pytest.raises(PermanentError, match=message):
        http.check_url(url)


def test_refusals_name_the_host_but_never_the_credentials() -> None:
    with pytest.raises(PermanentError) as info:
        http.check_url("http://admin:s3cret-token@127.0.0.1:8080/hook?key=abc")
    text = str(info.value)
    assert "127.0.0.1" in text
    for secret in ("s3cret", "admin", "key=abc", "/hook"):
        assert secret not in text


IPV4_PARTS = [
    "0",
    "00",
    "07",
    "010",
    "08",
    "0x",
    "0x1f",
    "0XFF",
    "255",
    "256",
    "65535",
    "16777215",
    "4294967295",
    "4294967296",
    "1",
    "377",
    "0377",
    "0400",
    "a",
    "",
]


@given(st.lists(st.sampled_from(IPV4_PARTS), min_size=1, max_size=5))
def test_loose_ipv4_parsing_agrees_with_the_c_library(parts: list[str]) -> None:
    text = ".".join(parts)
    try:
        # One trailing dot is accepted on purpose (browsers do), where inet_aton refuses it.
        c_form = text.removesuffix(".")
        expected: ipaddress.IPv4Address | None = ipaddress.IPv4Address(socket.inet_aton(c_form))
    except OSError:
        expected = None
    assert http.parse_ipv4_loose(text) == expected


# --------------------------------------------------------------------------- the connection


def test_the_connection_goes_to_the_checked_address_with_the_original_host(
    server: Server, dns: dict[str, list[list[str]]]
) -> None:
    server.routes["/hook"] = reply(200, b"ok")
    # The second answer points elsewhere (a rebinding name): it must never be asked for.
    dns["hooks.crm.test"] = [["127.0.0.1"], ["10.9.9.9"]]
    response = http.guarded_request(
        "POST",
        server.url("/hook?x=1", host="hooks.crm.test"),
        body=b'{"event": "x"}',
        headers={"Host": "evil.test", "Content-Type": "application/json"},
        allowed_networks=LOOPBACK,
    )
    assert (response.status, response.data) == (200, b"ok")
    assert server.seen == [Seen("/hook?x=1", f"hooks.crm.test:{server.port}", None)]
    assert len(dns["hooks.crm.test lookups"]) == 1


def test_without_the_allow_list_a_loopback_name_is_refused_before_connecting(
    server: Server, dns: dict[str, list[list[str]]]
) -> None:
    dns["hooks.crm.test"] = [["127.0.0.1"]]
    for url in (
        server.url("/"),
        server.url("/", host="hooks.crm.test"),
        server.url("/", "localhost"),
    ):
        with pytest.raises(PermanentError, match="not allowed"):
            http.guarded_request("GET", url)
    assert server.seen == []


def test_redirects_are_answers_not_followed(server: Server) -> None:
    server.routes["/moved"] = reply(302, Location=server.url("/secret"))
    server.routes["/secret"] = reply(200, b"internal")
    response = http.guarded_request("GET", server.url("/moved"), allowed_networks=LOOPBACK)
    assert response.status == 302
    with pytest.raises(
        PermanentError, match=r"HTTP 302 \(a redirect to 127\.0\.0\.1\).*not followed"
    ):
        http.download(
            server.url("/moved"), Path("unused"), max_bytes=100, allowed_networks=LOOPBACK
        )
    assert server.paths() == ["/moved", "/moved"]


def test_guarded_request_reads_a_bounded_answer_and_sends_url_credentials(server: Server) -> None:
    server.routes["/big"] = reply(200, b"y" * 5000)
    server.routes["/small"] = reply(200, b"fine")
    url = server.url("/big", host="user:p%40ss@127.0.0.1")
    response = http.guarded_request("GET", url, allowed_networks=LOOPBACK, max_response_bytes=100)
    assert response.data == b"y" * 100
    assert server.seen[0].authorization == "Basic " + base64.b64encode(b"user:p@ss").decode()
    # The connection cut short is not reused with bytes still unread on it.
    assert (
        http.guarded_request("GET", server.url("/small"), allowed_networks=LOOPBACK).data == b"fine"
    )


def test_a_closed_port_is_retryable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        with pytest.raises(RetryableError, match=r"connection to 127\.0\.0\.1 failed"):
            http.guarded_request("GET", f"http://127.0.0.1:{port}/", allowed_networks=LOOPBACK)


# --------------------------------------------------------------------------- download


def test_download_writes_the_file_and_nothing_else(server: Server, tmp_path: Path) -> None:
    server.routes["/data.csv"] = reply(200, CSV)
    server.routes["/stream"] = chunked(50_000)
    dest = tmp_path / "in" / "data.csv"
    assert http.download(
        server.url("/data.csv"), dest, max_bytes=len(CSV), allowed_networks=LOOPBACK
    ) == len(CSV)
    assert dest.read_bytes() == CSV
    other = tmp_path / "in" / "stream.bin"
    assert (
        http.download(server.url("/stream"), other, max_bytes=50_000, allowed_networks=LOOPBACK)
        == 50_000
    )
    assert leftovers(tmp_path / "in") == ["data.csv", "stream.bin"]


@pytest.mark.parametrize(
    ("route", "error", "message"),
    [
        (reply(200, b"z" * 2000), PermanentError, "announced 2000 bytes, over the limit of 1000"),
        (chunked(1_000_000), PermanentError, "sent more than the limit of 1000 bytes"),
        (announce(900, b"short"), RetryableError, "connection to 127.0.0.1 failed"),
        (reply(404, b"<h1>Not\nFound</h1>"), PermanentError, "HTTP 404: <h1>Not Found</h1>"),
        (reply(410), PermanentError, "HTTP 410"),
        (reply(500, b"boom"), RetryableError, "HTTP 500: boom"),
        (reply(503), RetryableError, "HTTP 503"),
        (reply(408), RetryableError, "HTTP 408"),
    ],
    ids=["content-length", "chunked", "truncated", "404", "410", "500", "503", "408"],
)
def test_download_failures_are_classified_and_leave_no_file(
    server: Server, tmp_path: Path, route: Route, error: type[Exception], message: str
) -> None:
    server.routes["/f"] = route
    dest = tmp_path / "in" / "f.csv"
    with pytest.raises(error, match=message) as info:
        http.download(server.url("/f"), dest, max_bytes=1000, allowed_networks=LOOPBACK)
    assert "127.0.0.1" in str(info.value)
    assert leftovers(tmp_path) == []


def test_download_429_carries_retry_after(server: Server, tmp_path: Path) -> None:
    server.routes["/busy"] = reply(429, Retry_After="7")
    with pytest.raises(RetryableError) as info:
        http.download(server.url("/busy"), tmp_path / "x", max_bytes=10, allowed_networks=LOOPBACK)
    assert info.value.delay == 7.0


def test_the_vendor_path_stays_unguarded(server: Server) -> None:
    server.routes["/v3/mail/send"] = reply(202)
    assert http.request("POST", server.url("/v3/mail/send"), body=b"{}").status == 202


# --------------------------------------------------------------------------- HTTPS


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_server(ca: trustme.CA) -> Iterator[Server]:
    httpd, thread = serve(TLSServer)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("hooks.crm.test").configure_cert(context)
    record: Server = httpd.record

    def sni(_sock: Any, name: str | None, _context: Any) -> None:
        record.server_names.append(name)

    context.sni_callback = sni
    httpd.context = context
    yield record
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


def test_https_uses_the_url_host_for_sni_and_certificate_while_connecting_to_the_ip(
    tls_server: Server, ca: trustme.CA, dns: dict[str, list[list[str]]], tmp_path: Path
) -> None:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    tls_server.routes["/hook"] = reply(200, b"secure")
    dns["hooks.crm.test"] = [["127.0.0.1"]]
    dns["other.crm.test"] = [["127.0.0.1"]]
    url = tls_server.url("/hook", host="hooks.crm.test", scheme="https")
    response = http.guarded_request("GET", url, allowed_networks=LOOPBACK, ca_certs=str(ca_file))
    assert response.data == b"secure"
    assert tls_server.server_names == ["hooks.crm.test"]
    assert tls_server.seen[0].host == f"hooks.crm.test:{tls_server.port}"
    # The certificate is for hooks.crm.test: neither another name on the same address nor
    # the bare address passes, and neither request is sent.
    for host in ("other.crm.test", "127.0.0.1"):
        with pytest.raises(RetryableError, match=f"connection to {host} failed"):
            http.guarded_request(
                "GET",
                tls_server.url("/hook", host=host, scheme="https"),
                allowed_networks=LOOPBACK,
                ca_certs=str(ca_file),
            )
    assert tls_server.server_names == ["hooks.crm.test", "other.crm.test", None]
    assert tls_server.paths() == ["/hook"]
    # Without our CA the certificate is not trusted at all.
    with pytest.raises(RetryableError):
        http.guarded_request("GET", url, allowed_networks=LOOPBACK)


# --------------------------------------------------------------------------- config


def test_allowed_networks_setting_env_and_errors(tmp_path: Path) -> None:
    assert OutboundSettings().allowed_networks == []
    settings = load_settings(
        environ={"CRMQUEUE_OUTBOUND__ALLOWED_NETWORKS": "127.0.0.0/8, ::1 ,10.20.0.0/16"}
    )
    assert settings.outbound.allowed_networks == ["127.0.0.0/8", "::1/128", "10.20.0.0/16"]
    assert settings.outbound.networks()[1] == ipaddress.ip_network("::1/128")
    config = tmp_path / "c.toml"
    config.write_text('[outbound]\nallowed_networks = ["192.168.0.0/16"]\n')
    assert load_settings(config, environ={}).outbound.allowed_networks == ["192.168.0.0/16"]
    for bad, reason in (("10.1.2.3/8", "host bits set"), ("intranet", "does not appear")):
        with pytest.raises(ConfigError, match=rf"outbound\.allowed_networks.*'{bad}'.*{reason}"):
            load_settings(environ={"CRMQUEUE_OUTBOUND__ALLOWED_NETWORKS": bad})


# --------------------------------------------------------------------------- imports


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    crm = create_engine(f"sqlite:///{tmp_path}/crm.db")
    init_db(crm)
    yield crm
    crm.dispose()


@pytest.fixture
def files(tmp_path: Path) -> Path:
    path = tmp_path / "files"
    path.mkdir()
    return path


def run_import(
    engine: sa.Engine,
    files: Path,
    url: str,
    file_type: str = "csv",
    outbound: OutboundSettings | None = None,
) -> dict[str, Any]:
    data = {
        "tenant_id": "t1",
        "user_id": "u1",
        "file_url": url,
        "file_type": file_type,
        "entity_type": "contacts",
    }
    # Every network allowed at validation: these tests are of the worker's own guard
    # (what enqueue refuses is tested in test_import_sources.py).
    anywhere = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
    payload = ImportPayload.model_validate(
        data, context={"files_dir": files, "allowed_networks": anywhere}
    )
    return Importer(payload, engine, files, "job-1", lambda _p: None, outbound=outbound).run()


def emails(engine: sa.Engine) -> list[str]:
    c = schema.contacts.c
    with engine.connect() as conn:
        return list(conn.execute(sa.select(c.email).order_by(c.id)).scalars())


ALLOW_LOOPBACK = OutboundSettings(allowed_networks=["127.0.0.0/8"])


def test_import_from_an_http_url_end_to_end(server: Server, engine: sa.Engine, files: Path) -> None:
    server.routes["/exports/contacts.csv"] = reply(200, CSV, Content_Type="text/csv")
    result = run_import(
        engine, files, server.url("/exports/contacts.csv?sig=abc"), outbound=ALLOW_LOOPBACK
    )
    assert result["counts"]["new"] == 2
    assert emails(engine) == ["a@x.com", "b@x.com"]
    assert server.paths() == ["/exports/contacts.csv?sig=abc"]
    assert leftovers(files) == []  # the download is gone once the import is done


def test_import_of_an_xlsx_url_uses_the_payload_type_and_the_sheet_fragment(
    server: Server, engine: sa.Engine, files: Path
) -> None:
    book = openpyxl.Workbook()
    book.active.append(["ignored"])
    sheet = book.create_sheet("People")
    sheet.append(["email", "first_name", "last_name"])
    sheet.append(["c@x.com", "Cy", "C"])
    data = io.BytesIO()
    book.save(data)
    server.routes["/download"] = reply(200, data.getvalue())
    result = run_import(engine, files, server.url("/download#sheet=People"), "xlsx", ALLOW_LOOPBACK)
    assert result["counts"]["new"] == 1
    assert server.paths() == ["/download"]  # the fragment stays on our side
    assert leftovers(files) == []


def test_an_import_url_on_loopback_is_refused_without_the_allow_list(
    server: Server, engine: sa.Engine, files: Path
) -> None:
    server.routes["/contacts.csv"] = reply(200, CSV)
    for outbound in (None, OutboundSettings(allowed_networks=["10.0.0.0/8"])):
        with pytest.raises(PermanentError, match=r"import source: host 127\.0\.0\.1 .*not allowed"):
            run_import(engine, files, server.url("/contacts.csv"), outbound=outbound)
    assert server.seen == []
    assert emails(engine) == []


def test_a_failed_import_from_a_url_leaves_no_download(
    server: Server, engine: sa.Engine, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.routes["/header-only.csv"] = reply(200, b"email,first_name,last_name\n")
    server.routes["/contacts.csv"] = reply(200, CSV)
    server.routes["/gone.csv"] = reply(404)
    with pytest.raises(PermanentError, match="no data rows"):
        run_import(engine, files, server.url("/header-only.csv"), outbound=ALLOW_LOOPBACK)
    with pytest.raises(PermanentError, match="HTTP 404"):
        run_import(engine, files, server.url("/gone.csv"), outbound=ALLOW_LOOPBACK)
    monkeypatch.setattr(import_export, "MAX_IMPORT_BYTES", 10)
    with pytest.raises(PermanentError, match="over the limit of 10 bytes"):
        run_import(engine, files, server.url("/contacts.csv"), outbound=ALLOW_LOOPBACK)
    assert leftovers(files) == []
    assert emails(engine) == []

"""What a tenant-supplied URL or import source may name, as far as its text can tell: no
DNS, no network library (``ipaddress`` and ``urllib.parse`` only), so that producers can
refuse at enqueue what the worker would refuse on every attempt. The worker's outbound
guard (crmqueue.providers.http.check_url) applies the same rules and also resolves host
names; these rules live here, below both.

- http and https only; a host is required; no IPv6 zone index.
- An address literal (``127.0.0.1``, ``[::ffff:127.0.0.1]``, and the forms inet_aton(3)
  reads: ``0x7f000001``, ``2130706433``, ``127.1``) must be public unless inside one of
  ``[outbound] allowed_networks``: private, loopback, link-local (cloud metadata at
  169.254.169.254), shared, multicast and reserved ranges are refused (REFERENCE
  "Outbound URLs"), also when carried inside an IPv6 address (IPv4-mapped, NAT64, 6to4).
- An import source (`source_parts`, `source_problem`) is a path relative to the files
  directory, an absolute path or ``file://`` URL inside it, or an http(s) URL as above.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

__all__ = [
    "DENIED_NETWORKS",
    "IPAddress",
    "IPNetwork",
    "Source",
    "embedded_ipv4",
    "is_allowed",
    "is_denied",
    "literal_problem",
    "parse_ipv4_loose",
    "source_parts",
    "source_problem",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# REFERENCE "Outbound URLs". `is_global` already refuses most of these, but what it covers
# has changed between Python versions (3.11 still calls multicast global), so the list is
# spelled out as well.
DENIED_NETWORKS: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(cidr)
    for cidr in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "224.0.0.0/3",  # multicast and everything above it
        "::/128",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
        "ff00::/8",
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_INET_ATON_PART = re.compile(r"0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*")
# What an IPv4 literal in any inet_aton(3) form is written with (IPv6 ones have a ':').
_LITERAL_CHARS = re.compile(r"[0-9a-fA-FxX.]+")


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one delivers to: IPv4-mapped, NAT64 or 6to4."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def is_denied(address: IPAddress) -> bool:
    """True for an address a tenant-supplied URL must not reach (before the allow-list)."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = embedded_ipv4(address)
        if inner is not None and is_denied(inner):
            return True
        if address.ipv4_mapped is not None or address in _NAT64:
            # These prefixes are never "global" or are "reserved" themselves: the IPv4
            # address they carry decides.
            return False
    if any(address in network for network in DENIED_NETWORKS):
        return True
    # is_reserved catches the deprecated IPv4-compatible ::a.b.c.d, which 3.11 calls global.
    return not address.is_global or address.is_reserved


def is_allowed(address: IPAddress, allowed: tuple[IPNetwork, ...]) -> bool:
    """True if `address` (or the IPv4 address it carries) is inside one of `allowed`."""
    candidates: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        inner = embedded_ipv4(address)
        if inner is not None:
            candidates.append(inner)
    return any(a in network for a in candidates for network in allowed)


def parse_ipv4_loose(host: str) -> ipaddress.IPv4Address | None:
    """The address inet_aton(3), and so getaddrinfo, reads in `host`: besides dotted quads,
    hex, octal, integer and short forms such as 0x7f000001, 017700000001, 2130706433 or
    127.1. `ipaddress` rejects all of these, and the C library would not. One trailing dot
    is allowed, as browsers allow it."""
    parts = host.removesuffix(".").split(".")
    if not 1 <= len(parts) <= 4 or not all(_INET_ATON_PART.fullmatch(p) for p in parts):
        return None
    values = [
        int(p[2:], 16) if p[:2].lower() == "0x" else int(p, 8) if p[0] == "0" else int(p)
        for p in parts
    ]
    *leading, last = values
    if any(v > 255 for v in leading) or last >= 256 ** (4 - len(leading)):
        return None
    number = last
    for index, value in enumerate(leading):
        number |= value << (8 * (3 - index))
    return ipaddress.IPv4Address(number)


def literal_problem(url: str, allowed_networks: Iterable[IPNetwork] = ()) -> str | None:
    """Why an http(s) URL cannot be fetched, as far as its text tells (None: it may be,
    once its host name resolves to allowed addresses): not http(s), no host, a zone
    index, or an address literal in a denied range outside `allowed_networks`. Names the
    host, never the URL (it may hold credentials)."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname or ""  # lower-cased, without brackets, port or user
    except ValueError:
        return "not a valid URL"
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        return f"only http and https URLs are allowed, not {scheme!r}"
    if not host:
        return "the URL has no host"
    if "%" in host:
        return f"host {host}: IPv6 zone indexes are not allowed"
    if ":" not in host and not _LITERAL_CHARS.fullmatch(host):
        return None  # a name (a letter beyond a-f, x): the worker resolves and checks it
    address: IPAddress | None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = parse_ipv4_loose(host)
    if address is None:
        return None  # a name: the worker resolves and checks it
    if is_denied(address) and not is_allowed(address, tuple(allowed_networks)):
        return (
            f"host {host} is a private, loopback, link-local or reserved address, which is"
            " not allowed (outbound.allowed_networks can allow a network)"
        )
    return None


class Source(NamedTuple):
    """An import source's parts: its scheme ('' for a path), the URL without its fragment
    or the path as given, and the sheet a ``#sheet=Name`` fragment names (or None)."""

    scheme: str
    location: str
    sheet: str | None


_SHEET = "#sheet="
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")


def source_parts(file_url: str) -> Source:
    """`file_url` split as the worker reads it. In a URL (``file://``, ``https://``) a '#'
    starts the fragment (a '#' in a file name is written %23). A path is taken as it is,
    '#', '?', '%', spaces and all, but for a trailing ``#sheet=Name``."""
    # urlsplit's own rule for a scheme (RFC 3986 section 3.1), at a fraction of its cost:
    # this runs for every import enqueued.
    prefix = _SCHEME.match(file_url)
    scheme = prefix.group(1).lower() if prefix else ""
    if scheme:
        location, _, fragment = file_url.partition("#")
        sheet = unquote(fragment[len("sheet=") :]) if fragment.startswith("sheet=") else None
    else:
        location, found, name = file_url.rpartition(_SHEET)
        if not found:
            location, name = file_url, ""
        sheet = unquote(name) if found else None
    return Source(scheme, location, sheet or None)


def source_problem(
    file_url: str, files_dir: str, allowed_networks: Iterable[IPNetwork] = ()
) -> str | None:
    """Why an import source can never be read, as far as its text tells (None: it may
    be): a scheme other than file, http or https; a file:// URL with a remote host; a
    path outside `files_dir` (judged on the text: '..' and absolute paths; symbolic
    links are the worker's to follow); an http(s) URL `literal_problem` refuses."""
    source = source_parts(file_url)
    if source.scheme in ("http", "https"):
        return literal_problem(source.location, allowed_networks)
    if source.scheme == "file":
        parts = urlsplit(source.location)
        if parts.netloc not in ("", "localhost"):
            return f"a file:// URL with a remote host {parts.netloc!r}"
        path = unquote(parts.path)
    elif source.scheme == "":
        path = source.location
    else:
        return (
            f"unsupported scheme {source.scheme!r}: give a path under the files directory,"
            " a file:// URL inside it, or an http(s) URL"
        )
    if "\x00" in path:
        return "a path cannot hold NUL"
    if path[:1] != "/" and ".." not in path and path.strip("./"):
        return None  # relative, no way up: inside (the common case, without path calls)
    base = os.path.abspath(files_dir)
    full = os.path.normpath(os.path.join(base, path))  # an absolute path replaces base
    if full == base:
        return f"{path!r} names the files directory itself, not a file in it"
    if os.path.commonpath([base, full]) != base:
        return f"{path!r} is outside the files directory"
    return None

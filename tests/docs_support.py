"""The documentation's examples, run as written: a loopback "internet" for them.

Every Python block of README.md and docs/*.md is a test (Sybil; ``conftest.py`` at the
root).  The examples name real hosts (the vendors' endpoints, ``api.example.com``) and read
credentials from the environment and key files from the working directory, as a user's
code does.  :class:`LoopbackInternet` makes that run on this machine only:

- each named host resolves to a local fake on 127.0.0.1 (the vendor fakes of
  ``tests/fakes``, a generic JSON API for ``api.example.com`` and ``example.com``), which
  serve HTTPS with a certificate for that name from a test CA that ``requests``
  (``REQUESTS_CA_BUNDLE``) and httpx (``SSL_CERT_FILE``) are told to trust;
- any other lookup or connection that is not to loopback is refused, and the example
  fails naming it (:func:`install_guard`);
- the credentials are the fakes', in the environment; the WeChat Pay key files are in the
  working directory.

A block followed by an ``output`` block runs in a fresh interpreter (its stdout and stderr
are compared with that block, where ``...`` stands for any text: :func:`same_output`); the
others run in this process, each in a fresh namespace.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

#: The hosts the examples name, served by local fakes.
VENDOR_HOSTS = ("visual.volcengineapi.com", "ark.cn-beijing.volces.com",
                "api.mch.weixin.qq.com", "api2.mch.weixin.qq.com")
EXAMPLE_HOSTS = ("api.example.com", "example.com")
#: Environment variable a child interpreter reads the host map from.
HOSTS_VARIABLE = "SMARTRETRY_DOCS_HOSTS"
#: Credentials of the fakes, as the examples read them from the environment.
CREDENTIALS = {"ARK_API_KEY": "ark-docs-key", "VOLC_ACCESSKEY": "AKLTdocs",
               "VOLC_SECRETKEY": "c2VjcmV0LWRvY3M=", "WECHATPAY_MCHID": "1900000001",
               "WECHATPAY_SERIAL_NO": "5157F09EFDC096DE15EBE81A47057A7232F1B8E1",
               "WECHATPAY_PUBLIC_KEY_ID": "PUB_KEY_ID_0114232134912410000000000000",
               "WECHATPAY_APIV3_KEY": "0123456789abcdef0123456789abcdef"}

_refused: list[str] = []


def _loopback(host: Any) -> bool:
    host = host.decode() if isinstance(host, bytes) else str(host)
    host = host.strip("[]").split("%", 1)[0].lower()
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def install_guard(hosts: dict[str, int]) -> list[str]:
    """Resolve each of ``hosts`` to 127.0.0.1 and its port; refuse (and record) any other
    lookup of, or connection to, a host that is not loopback.  Returns the record."""
    real_getaddrinfo = socket.getaddrinfo
    real_connect = socket.socket.connect
    # Each named host resolves to a loopback address of its own (127.0.0.10, .11…) with its
    # fake's port; a connection to that address goes to the fake's port on 127.0.0.1.
    # asyncio (anyio) keeps only the address of a lookup and connects to the URL's own
    # port (443), so the address alone must say which fake is meant.
    aliases = {f"127.0.0.{10 + index}": port
               for index, port in enumerate(ports for _, ports in sorted(hosts.items()))}
    alias_of = {name: f"127.0.0.{10 + index}" for index, name in enumerate(sorted(hosts))}

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if isinstance(name, str) and name.lower() in hosts:
            return real_getaddrinfo(alias_of[name.lower()], hosts[name.lower()], *args,
                                    **kwargs)
        if not _loopback(host):
            _refused.append(f"lookup {host}")
            raise socket.gaierror(socket.EAI_NONAME,
                                  f"{host}: not loopback, refused by the docs test")
        return real_getaddrinfo(host, port, *args, **kwargs)

    def connect(sock: socket.socket, address: Any) -> Any:
        if sock.family == socket.AF_INET and address[0] in aliases:
            return real_connect(sock, ("127.0.0.1", aliases[address[0]]))
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
            _refused.append(f"connect {address[0]}")
            raise ConnectionRefusedError(111, f"{address[0]}: not loopback, refused by the "
                                         "docs test")
        return real_connect(sock, address)

    socket.getaddrinfo = getaddrinfo  # type: ignore[assignment]
    socket.socket.connect = connect  # type: ignore[method-assign]
    return _refused


def install_in_child() -> None:
    """In a child interpreter: the guard, with the host map its parent put in the
    environment."""
    install_guard(json.loads(os.environ.get(HOSTS_VARIABLE, "{}")))


def _certificates(directory: Path, names: tuple[str, ...]) -> tuple[Path, Path, Path]:
    """(CA certificate, leaf certificate, leaf key) PEM files: a test CA and a leaf for
    ``names``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "requests-smartretry docs CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                       crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False,
                                       decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / "docs-ca.pem", directory / "docs-leaf.pem", directory / "docs-leaf.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


class LoopbackInternet:
    """The fakes behind the examples' hosts, serving HTTPS (see the module docstring)."""

    def __init__(self, directory: Path) -> None:
        from requests_smartretry.faultserver import FaultServer
        from tests.fakes.ark import FakeArk
        from tests.fakes.volcengine import FakeVisual
        from tests.fakes.wechatpay import FakeWechatPay, new_key

        self.directory = directory
        self.ca, leaf, leaf_key = _certificates(directory, VENDOR_HOSTS + EXAMPLE_HOSTS)
        self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.tls.load_cert_chain(leaf, leaf_key)
        self.merchant_key, self.platform_key = new_key(), new_key()
        self.released = threading.Event()
        # A task runs once before it succeeds: the waiting page shows a progress line.
        self.ark = FakeArk(CREDENTIALS["ARK_API_KEY"], progress=("running", "succeeded"))
        self.visual = FakeVisual(CREDENTIALS["VOLC_ACCESSKEY"], CREDENTIALS["VOLC_SECRETKEY"])
        self.pay = FakeWechatPay(self.merchant_key.public_key(),
                                 CREDENTIALS["WECHATPAY_MCHID"],
                                 platform_key=self.platform_key,
                                 platform_serial=CREDENTIALS["WECHATPAY_PUBLIC_KEY_ID"])
        self.example = FaultServer(handlers={"/v1/": _json_api, "/slow": self._hang})
        for server in (self.ark.server, self.visual.server, self.pay.server, self.example):
            server.tls = self.tls

    def _hang(self, server: Any, sock: socket.socket, request: Any) -> None:
        self.released.wait(60)  # never answers (until the fakes stop)

    @property
    def hosts(self) -> dict[str, int]:
        """Host name -> local port."""
        ports = {"visual.volcengineapi.com": self.visual.server.port,
                 "ark.cn-beijing.volces.com": self.ark.server.port,
                 "api.mch.weixin.qq.com": self.pay.server.port,
                 "api2.mch.weixin.qq.com": self.pay.server.port}
        ports.update({name: self.example.port for name in EXAMPLE_HOSTS})
        return ports

    def environment(self) -> dict[str, str]:
        """The variables an example's process gets: CA bundle, host map, credentials."""
        return {"REQUESTS_CA_BUNDLE": str(self.ca), "SSL_CERT_FILE": str(self.ca),
                HOSTS_VARIABLE: json.dumps(self.hosts), **CREDENTIALS}

    def write_key_files(self) -> None:
        """The merchant's and the platform's PEM files the WeChat Pay examples open."""
        from cryptography.hazmat.primitives import serialization

        from tests.fakes.wechatpay import public_pem

        (self.directory / "apiclient_key.pem").write_bytes(self.merchant_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        (self.directory / "pub_key.pem").write_text(public_pem(self.platform_key))

    def __enter__(self) -> LoopbackInternet:
        for fake in (self.ark, self.visual, self.pay):
            fake.__enter__()
        self.example.start()
        self.write_key_files()
        return self

    def __exit__(self, *exc: object) -> None:
        self.released.set()
        for fake in (self.ark, self.visual, self.pay):
            fake.__exit__()
        self.example.stop()


def _json_api(server: Any, sock: socket.socket, request: Any) -> None:
    """``api.example.com/v1/...``: 200 with a small JSON body naming what was asked."""
    body = json.dumps({"ok": True, "method": request.method,
                       "path": request.route}).encode()
    server.send(sock, 200, body, {"Content-Type": "application/json"})


def following_output(text: str, end: int) -> Optional[str]:
    """The body of an ``output`` fenced block that directly follows offset ``end``."""
    rest = text[end:]
    stripped = rest.lstrip("\n")
    if not stripped.startswith("```output\n"):
        return None
    body = stripped[len("```output\n"):]
    return body[: body.index("```")]


def same_output(printed: str, shown: str) -> bool:
    """Whether ``printed`` is what a page shows: line for line, ``...`` matching any text
    (doctest's ELLIPSIS), nothing else loosened."""
    import doctest

    if "..." not in shown:
        return printed.splitlines() == shown.splitlines()
    return doctest.OutputChecker().check_output(shown, printed, doctest.ELLIPSIS)


def iter_python_blocks(text: str) -> Iterator[tuple[int, str]]:
    """(line, code) of every ``python`` fenced block of a Markdown text."""
    import re

    for match in re.finditer(r"(?ms)^```python\n(.*?)^```", text):
        yield text[: match.start()].count("\n") + 1, match.group(1)

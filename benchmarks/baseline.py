#!/usr/bin/env python3
"""The straight-line baseline: the same Vault and REST calls as one vault_bridge pass, written
directly with hvac + requests + cryptography, nothing else.

It reads vault_bridge's own configuration file (TOML, the keys the lab writes), and for every
cluster: reads ``GET /v1/cluster/certificates``, makes a key and a CSR per certificate (``sign``
mode) or asks Vault for both (``issue``), signs through ``<mount>/sign/<role>`` (or
``<mount>/issue/<role>``), sends one bulk ``PUT /v1/cluster/certificates``, reads the
certificates back and compares each leaf, then opens a TLS connection to every endpoint that
serves one and compares the served leaf. No journal, no state, no follow-ups, no retries, no
checks before the install: the floor a tool doing this work can be compared with.

    VAULT_TOKEN=... python benchmarks/baseline.py --config cfg.toml [--threads 8]

Clusters run on ``--threads`` threads (one cluster per thread at a time). The Vault token comes
from ``$VAULT_TOKEN``, each cluster's password from its ``password_env`` variable; neither is
printed. Exit 0 when every certificate is installed and served, 1 otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import os
import socket
import ssl
import sys
import tempfile
import threading
import tomllib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import hvac
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

_local = threading.local()


def vault(config: dict[str, Any]) -> Any:
    """One hvac client per thread."""
    client = getattr(_local, "vault", None)
    if client is None:
        table = config["vault"]
        client = hvac.Client(
            url=table["address"],
            token=os.environ["VAULT_TOKEN"],
            verify=table.get("ca_cert") or True,
        )
        _local.vault = client
    return client


def leaf_der(pem: str) -> bytes:
    return x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)


def new_key(key_type: str, bits: int) -> Any:
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return ec.generate_private_key(ec.SECP256R1() if bits == 256 else ec.SECP384R1())


def csr_for(key: Any, cn: str, dns: list[str], ips: list[str]) -> str:
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def obtain(config: dict[str, Any], spec: dict[str, Any]) -> dict[str, str]:
    defaults = config.get("defaults", {})
    mount = spec.get("pki_mount", defaults.get("pki_mount", "pki"))
    mode = spec.get("mode", defaults.get("mode", "sign"))
    key_type = spec.get("key_type", defaults.get("key_type", "rsa"))
    bits = int(spec.get("key_bits", defaults.get("key_bits", 2048 if key_type == "rsa" else 256)))
    params = {
        "alt_names": ",".join(spec.get("alt_names", [])),
        "ip_sans": ",".join(spec.get("ip_sans", [])),
        "ttl": spec.get("ttl", defaults.get("ttl", "720h")),
    }
    if mode == "sign":
        key = new_key(key_type, bits)
        csr = csr_for(key, spec["common_name"], spec.get("alt_names", []), spec.get("ip_sans", []))
        data = vault(config).secrets.pki.sign_certificate(
            name=spec["role"],
            csr=csr,
            common_name=spec["common_name"],
            extra_params=params,
            mount_point=mount,
        )["data"]
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ).decode()
    else:
        params["key_type"] = key_type
        params["key_bits"] = str(bits)
        data = vault(config).secrets.pki.generate_certificate(
            name=spec["role"],
            common_name=spec["common_name"],
            extra_params=params,
            mount_point=mount,
        )["data"]
        key_pem = data["private_key"]
    chain = [data["certificate"], *(data.get("ca_chain") or [])]
    return {"certificate": "\n".join(c.strip() for c in chain) + "\n", "key": key_pem}


def served_der(endpoint: str) -> bytes:
    host, _, port = endpoint.rpartition(":")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((host, int(port)), timeout=10) as sock,
        context.wrap_socket(sock, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def trust_bundle(config: dict[str, Any], directory: str) -> str:
    """Every cluster's ``ca_file`` plus the issuing CA chain (a rotated ``api`` certificate
    is issued by it): one file for every session."""
    mount = config.get("defaults", {}).get("pki_mount", "pki")
    chain = vault(config).secrets.pki.read_ca_certificate_chain(mount_point=mount)
    pems = [chain] if isinstance(chain, str) else list(chain)
    for cluster in config["clusters"]:
        if cluster.get("ca_file"):
            with open(cluster["ca_file"], encoding="utf-8") as handle:
                pems.append(handle.read())
    path = os.path.join(directory, "trust.pem")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(p.strip() for p in pems if p.strip()) + "\n")
    return path


def rotate(config: dict[str, Any], cluster: dict[str, Any], verify: str) -> None:
    session = requests.Session()
    session.trust_env = False
    session.auth = (cluster["username"], os.environ[cluster["password_env"]])
    url = cluster["url"]
    session.get(f"{url}/v1/cluster/certificates", verify=verify, timeout=30).raise_for_status()
    items = [
        {"name": name, **obtain(config, spec)} for name, spec in cluster["certificates"].items()
    ]
    answer = session.put(
        f"{url}/v1/cluster/certificates",
        json={"certificates": items},
        verify=verify,
        timeout=30,
    )
    answer.raise_for_status()
    now = session.get(f"{url}/v1/cluster/certificates", verify=verify, timeout=30).json()
    endpoints = cluster.get("verify_endpoints", {})
    for item in items:
        expected = leaf_der(item["certificate"])
        if leaf_der(now[f"{item['name']}_cert"]) != expected:
            raise RuntimeError(f"{cluster['name']}: {item['name']} not installed")
        endpoint = endpoints.get(item["name"])
        if item["name"] == "api":
            endpoint = url.removeprefix("https://")
        if endpoint and served_der(endpoint) != expected:
            raise RuntimeError(f"{cluster['name']}: {endpoint} serves another certificate")
    session.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    with open(args.config, "rb") as handle:
        config = tomllib.load(handle)
    failed = 0
    with (
        tempfile.TemporaryDirectory() as tmp,
        ThreadPoolExecutor(max_workers=args.threads) as pool,
    ):
        verify = trust_bundle(config, tmp)
        futures = [pool.submit(rotate, config, c, verify) for c in config["clusters"]]
        for future in futures:
            try:
                future.result()
            except Exception as exc:  # a benchmark: report and go on
                failed += 1
                print(f"failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    digest = hashlib.sha256(args.config.encode()).hexdigest()[:8]
    print(f"baseline {digest}: {len(config['clusters']) - failed} cluster(s) rotated")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

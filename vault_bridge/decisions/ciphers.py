"""Pure: whether a cluster's TLS 1.2 cipher settings accept a certificate's key.

Redis Enterprise 8.2 refuses an ECDSA ``api``, ``cm``, ``metrics_exporter`` or ``proxy``
certificate at upload when the ciphers configured for it are RSA only (release notes 8.2.0-25).
``cm``, ``api`` and ``metrics_exporter`` serve the control plane (``control_cipher_suites``),
``proxy`` the databases (``data_cipher_list``). TLS 1.3 suites do not depend on the key type.

A cipher string is read entry by entry (``:``, ``,`` or spaces between them; ``!``/``-``
entries remove and are ignored). Each entry is ECDSA (``ECDHE-ECDSA-...``,
``TLS_ECDHE_ECDSA_WITH_...``, ``aECDSA``), RSA (``ECDHE-RSA-...``, ``DHE-RSA-...``,
``TLS_RSA_WITH_...``, plain ``AES128-GCM-SHA256``, ``aRSA``, ``kRSA``) or a keyword whose
meaning cannot be told here (``HIGH``, ``DEFAULT``): then nothing is claimed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal

from vault_bridge.models.certificates import CertName

ECDSA_REFUSED_FROM = (8, 2)
CIPHER_SETTING: Mapping[CertName, Literal["control_cipher_suites", "data_cipher_list"]] = {
    CertName.API: "control_cipher_suites",
    CertName.CM: "control_cipher_suites",
    CertName.METRICS_EXPORTER: "control_cipher_suites",
    CertName.PROXY: "data_cipher_list",
}
_PLAIN_RSA = re.compile(r"^(AES|CAMELLIA|DES|RC4|SEED|IDEA|ARIA)[A-Z0-9-]*$")


def _kind(entry: str) -> Literal["ecdsa", "rsa", "unknown"]:
    upper = entry.upper()
    if "ECDSA" in upper:
        return "ecdsa"
    if re.search(r"(^|[-_])(A|K)?RSA([-_]|$)", upper) or _PLAIN_RSA.match(upper):
        return "rsa"
    return "unknown"


def allows_ecdsa(ciphers: str | None) -> bool | None:
    """True: an ECDSA suite is enabled; False: RSA suites only; None: cannot be told."""
    if ciphers is None:
        return None
    entries = [e for e in re.split(r"[:,\s]+", ciphers.strip()) if e]
    kinds = [_kind(e.lstrip("+")) for e in entries if not e.startswith(("!", "-"))]
    if not kinds:
        return None
    if "ecdsa" in kinds:
        return True
    if all(kind == "rsa" for kind in kinds):
        return False
    return None

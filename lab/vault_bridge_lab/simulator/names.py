"""Certificate names and listeners of a simulated cluster, and the versions that know them."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from vault_bridge.models.certificates import CertName

Version = tuple[int, ...]

#: Listeners with a port of their own, each serving the certificate of the same name.
LISTENERS: Final = ("api", "cm", "metrics_exporter", "proxy")
MTLS_TRUSTED_CA: Final = "mtls_trusted_ca"
BULK_MIN_VERSION: Final[Version] = (7, 22, 2)
#: Lowest software version that knows each certificate name (absent: every version).
NAME_MIN_VERSION: Final[Mapping[str, Version]] = {
    CertName.LDAP_CLIENT.value: (7, 4),
    MTLS_TRUSTED_CA: (7, 8),
    CertName.CCS_INTERNODE.value: BULK_MIN_VERSION,
    CertName.DATA_INTERNODE.value: BULK_MIN_VERSION,
}
INTERNODE_NAMES: Final = frozenset(n.value for n in CertName if n.internode)
KNOWN_NAMES: Final = frozenset([*(n.value for n in CertName), MTLS_TRUSTED_CA])


def parse_version(version: str) -> Version:
    """``"7.22.2-14"`` -> ``(7, 22, 2, 14)``; raises ValueError for anything else."""
    if not re.fullmatch(r"\d+(\.\d+)*(-\d+)?", version):
        raise ValueError(f"not a Redis Enterprise software version: {version!r}")
    return tuple(int(part) for part in re.findall(r"\d+", version))

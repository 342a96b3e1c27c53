"""Validation errors as one line each: the key path, what was expected, and the nearest valid
key for a typo.
"""

from __future__ import annotations

from typing import Any

from pydantic import (
    BaseModel,
)

from vault_bridge.config.schema import (
    TRUSTED_CA_KEY,
    CertificateConfig,
    ClusterConfig,
    DatabaseCertConfig,
    FileConfig,
    TrustedCaConfig,
)
from vault_bridge.config.validators import _suggest
from vault_bridge.models.certificates import CertName


def _fields_of(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the key at ``loc`` (for suggestions)."""
    model: type[BaseModel] = FileConfig
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if part == TRUSTED_CA_KEY:
            model = TrustedCaConfig
            continue
        field = model.model_fields.get(part)
        if field is None:
            if model is ClusterConfig or part in CertName.__members__.values():
                model = CertificateConfig
                continue
            return model if issubclass(model, CertificateConfig) else None
        ann = field.annotation
        target = _unwrap_model(ann)
        if target is None:
            if part == "certificates":
                model = CertificateConfig
                continue
            if part == "databases":
                model = DatabaseCertConfig
                continue
            return None
        model = target
    return model


def _unwrap_model(ann: Any) -> type[BaseModel] | None:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in getattr(ann, "__args__", ()) or ():
        found = _unwrap_model(arg)
        if found is not None:
            return found
    return None


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _one_line(error: Any) -> str:
    loc = tuple(p for p in error["loc"] if p not in ("function-after[_fields_for_method()]",))
    path = _format_loc(loc)
    kind = error["type"]
    if kind == "extra_forbidden":
        model = _model_at(loc)
        hint = _suggest(str(loc[-1]), _fields_of(model)) if model else ""
        return f"{path}: unknown key{hint}"
    if kind == "missing":
        return f"{path}: missing required key"
    msg = str(error["msg"]).removeprefix("Value error, ")
    if "input" in error and kind not in ("value_error",) and not isinstance(error["input"], dict):
        return f"{path}: {msg}, got {error['input']!r}"
    return f"{path}: {msg}" if path else msg

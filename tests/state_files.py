"""Reading the state directory's files as JSON, the way a test looks at what is on disk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def state_files(state_dir: Path) -> list[Path]:
    """The marker and every cluster's file."""
    return [state_dir / "state.json", *sorted((state_dir / "clusters").glob("*.json"))]


def read_state(state_dir: Path) -> dict[str, Any]:
    """Every cluster's file merged into one document (certificates, superseded, journal); {}
    while there is none or one is being replaced."""
    merged: dict[str, Any] = {"certificates": {}, "superseded": [], "journal": []}
    paths = sorted((state_dir / "clusters").glob("*.json"))
    if not paths:
        return {}
    for path in paths:
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            return {}
        merged["certificates"].update(data.get("certificates") or {})
        merged["superseded"].extend(data.get("superseded") or [])
        merged["journal"].extend(data.get("journal") or [])
    return merged


def snapshot(state_dir: Path) -> dict[str, bytes]:
    """The bytes of every state file, by name."""
    return {p.name: p.read_bytes() for p in state_files(state_dir) if p.exists()}

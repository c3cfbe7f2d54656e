"""The measured floor of one archive, kept beside the archive cache so ``fetch.py`` can hold
each method's CPU per GB against it.

``floor.py`` saves it; ``fetch.py`` loads it by the archive's sha256, so a floor measured on
another archive (another size, seed or format) is never applied.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

FLOORS = Path(__file__).resolve().parent / ".work" / "floors"


@dataclass(frozen=True)
class Floor:
    archive_sha256: str
    cpu_s_per_gb: float
    wall_s: float
    parts_cpu_s: dict[str, float]
    measured: str


def save(floor: Floor) -> Path:
    FLOORS.mkdir(parents=True, exist_ok=True)
    path = FLOORS / f"{floor.archive_sha256}.json"
    path.write_text(json.dumps(asdict(floor), indent=2) + "\n")
    return path


def load(archive_sha256: str) -> Floor | None:
    path = FLOORS / f"{archive_sha256}.json"
    if not path.exists():
        return None
    return Floor(**json.loads(path.read_text()))

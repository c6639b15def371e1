"""The demo's output folder: refused unless empty or an earlier demo's, with one reusable record per stage.

``OUT/demo.json`` marks a demo folder. A finished stage writes ``OUT/stages/NAME.json`` (its settings, its
result and how long it took) after its files; a rerun reuses the result while the settings are the same, and
redoes the stage (removing its files first) when they differ or the record is missing or unreadable.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from deltakg.serialization import write_json
from kg_data.errors import KGDataError

__all__ = ["DemoFolder", "MARKER", "FORMAT"]

MARKER = "demo.json"
FORMAT = "deltakg-demo"
VERSION = 1


class DemoFolder:
    """``OUT``: the stage folders, ``stages/*.json``, ``report.json`` and the ``demo.json`` marker."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise KGDataError("exists and is not a folder; choose another --out", path=self.root)
        marker = self.root / MARKER
        if marker.exists():
            try:
                meta = json.loads(marker.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
                raise KGDataError(f"unreadable demo marker ({err.__class__.__name__}); remove the folder or choose "
                                  f"another --out", path=marker) from None
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise KGDataError(f"not a deltakg demo marker (expected format {FORMAT!r}); choose another --out",
                                  path=marker)
        elif self.root.is_dir() and any(self.root.iterdir()):
            raise KGDataError(f"is not empty and holds no {MARKER} (not an earlier demo run); choose an empty or new "
                              f"folder for --out", path=self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        if not marker.exists():
            write_json(marker, {"format": FORMAT, "version": VERSION})

    def path(self, stage: str) -> Path:
        """The folder of one stage's files."""
        return self.root / stage

    def _record(self, stage: str) -> Path:
        return self.root / "stages" / f"{stage}.json"

    def finished(self, stage: str, settings: dict[str, Any]) -> dict[str, Any] | None:
        """The stored record of ``stage`` when it finished with these ``settings``, else None."""
        try:
            record = json.loads(self._record(stage).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        if not isinstance(record, dict) or record.get("settings") != json.loads(json.dumps(settings)):
            return None
        return record if isinstance(record.get("result"), dict) else None

    def start(self, stage: str) -> Path:
        """Forget an earlier record of ``stage`` and empty its folder; returns the folder."""
        self._record(stage).unlink(missing_ok=True)
        folder = self.path(stage)
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        return folder

    def finish(self, stage: str, settings: dict[str, Any], result: dict[str, Any], seconds: float) -> dict[str, Any]:
        """Store the record of a finished stage (after its files are written)."""
        record = {"stage": stage, "settings": settings, "seconds": round(seconds, 1), "result": result}
        self._record(stage).parent.mkdir(exist_ok=True)
        write_json(self._record(stage), record)
        return json.loads(json.dumps(record, default=str))

"""A sweep's state on disk, which makes it resumable: ``sweep.json`` holds its id and options;
``searches/<name>.json`` each search's parent run, its stage (searching -> searched -> done), the
chosen configuration and the final runs' ids. ``--resume`` replays the same plan and skips what is
done."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from harness.tuning.plan import SweepOptions


def state_path(workdir: Path, search_name: str) -> Path:
    return workdir / "searches" / f"{search_name}.json"


def load_state(workdir: Path, search_name: str) -> dict[str, Any]:
    path = state_path(workdir, search_name)
    return json.loads(path.read_text()) if path.exists() else {}


def save_state(workdir: Path, search_name: str, state: dict[str, Any]) -> None:
    path = state_path(workdir, search_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, state)


def options_to_json(opts: SweepOptions) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()}


def load_sweep(workdir: Path) -> tuple[SweepOptions, str]:
    """Options and id of the sweep in ``workdir`` (for --resume and status)."""
    path = Path(workdir) / "sweep.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {workdir} is not a sweep directory")
    saved = json.loads(path.read_text())
    options = dict(saved["options"])
    for key in ("workdir", "space_dir", "dataset_file"):
        if options.get(key) is not None:
            options[key] = Path(options[key])
    return SweepOptions(**options), saved["sweep_id"]


def write_json(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1, sort_keys=True, default=str))
    os.replace(tmp, path)

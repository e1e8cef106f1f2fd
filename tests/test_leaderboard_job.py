"""scripts/first_leaderboard.sh's plan: every stage names real models and datasets, the large
sets are stages of their own, and a stage's state (new / started / finished) is read from its workdir."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from harness.data import get_spec
from harness.models import get_model
from harness.featurize import STRUCTURE_KINDS

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "first_leaderboard.sh"


def _plan(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """The plan, against no published pages unless PUBLISHED_DIR says where they are."""
    env = {"PUBLISHED_DIR": str(tmp_path / "no-pages"), **env}
    return subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PLAN_ONLY": "1", "LEADERBOARD_RUNS": str(tmp_path), **env})


def _stages(result: subprocess.CompletedProcess) -> dict[str, list[str]]:
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line.split(" | ") for line in result.stdout.splitlines()[1:]]
    return {cells[0]: cells[1:] for cells in lines}


def test_every_stage_names_registered_models_and_catalog_datasets(tmp_path):
    stages = _stages(_plan(tmp_path, SETS="small large"))
    matbench = [f"{family}-{short}" for short in ("steels", "jdft2d", "expt-gap", "dielectric")
                for family in ("classical", "fc", "attention")] + ["structure-light", "structure-heavy"]
    small = matbench + ["classical-extended", "fc-extended", "attention-aflow-elastic", "attention-extended"]
    large = [f"{family}-{sets}-large" for sets in ("extended", "matbench") for family in ("classical", "fc", "attention")] \
        + ["structure-light-large", "structure-heavy-large"]
    assert list(stages) == small + large
    # the Matbench stages before the crabnet28 ones, one dataset at a time (smallest first): pages
    # are published per dataset, and a store started afresh catches up on one dataset after another
    suites = [{get_spec(d).suite for d in stages[name][2].split(",")} for name in small]
    assert suites == [{"matbench"}] * 14 + [{"crabnet28"}] * 4
    order = [stages[name][2] for name in matbench]
    assert order == [d for d in ("matbench_steels", "matbench_jdft2d", "matbench_expt_gap", "matbench_dielectric")
                     for _ in range(3)] + ["matbench_phonons"] * 2
    for name, (state, models, datasets, _, _) in stages.items():
        assert state == "new"
        for model in models.split(","):
            get_model(model)  # raises on an unknown name
        specs = [get_spec(d) for d in datasets.split(",")]
        assert all(s.task_type == "regression" for s in specs), name
        structure = name.startswith("structure")
        assert {get_model(m).input_kind in STRUCTURE_KINDS for m in models.split(",")} == {structure}, name
    # one store: no (model, dataset) in two stages (the large sets are new datasets, not the small ones again)
    pairs = [(m, d) for _, models, datasets, _, _ in stages.values()
             for m in models.split(",") for d in datasets.split(",")]
    assert len(pairs) == len(set(pairs))
    # the attention models' two stages on the extended sets cover them once, the two aflow elastic sets first
    first, rest = (set(stages[n][2].split(",")) for n in ("attention-aflow-elastic", "attention-extended"))
    assert not first & rest and first | rest == set(stages["classical-extended"][2].split(","))
    assert first == {"aflow__ael_bulk_modulus_vrh", "aflow__ael_shear_modulus_vrh"}
    # SVR's O(N^2) fit is kept off the 85k-342k row sets
    assert "svr" in stages["classical-extended"][1].split(",")
    assert "svr" not in stages["classical-extended-large"][1].split(",")
    assert len(stages["attention-extended-large"][2].split(",")) == 10


def test_stage_state_comes_from_its_workdir_and_bad_sets_are_refused(tmp_path):
    (tmp_path / "fc-extended").mkdir()
    (tmp_path / "fc-extended" / "sweep.json").write_text("{}")
    (tmp_path / "classical-extended").mkdir()
    (tmp_path / "classical-extended" / "sweep.json").write_text("{}")
    (tmp_path / "classical-extended" / "stage-done").write_text("2026-12-05 04:36:44\n")
    stages = _stages(_plan(tmp_path, STAGES="classical fc"))
    assert {k: v[0] for k, v in stages.items()} == {
        "classical-extended": "finished 2026-12-05 04:36:44", "fc-extended": "started",
        **{f"{family}-{short}": "new" for short in ("steels", "jdft2d", "expt-gap", "dielectric")
           for family in ("classical", "fc")}}
    bad = _plan(tmp_path, SETS="huge")
    assert bad.returncode == 2 and 'SETS="huge": each word must be small or large' in bad.stderr


def test_stages_of_datasets_the_committed_pages_show_complete_are_skipped(tmp_path):
    """leaderboards/ shows the 8 extended crabnet28 sets and matbench_steels complete (18 models,
    every fold or final fit; publishing never loses a result, so they stay complete): their
    stages are skipped. A dataset that lacks a model (expt_gap, with one model taken out of a
    copy's record and its run data removed) has its stages run with every model: pages without
    run data are replaced only as a whole. With run data, only the missing model runs."""
    import json
    import shutil

    published = tmp_path / "published"
    shutil.copytree(Path(__file__).resolve().parent.parent / "leaderboards", published)
    record = published / "matbench" / "matbench_expt_gap" / "record.json"
    data = json.loads(record.read_text())
    data["results"] = [r for r in data["results"] if r["model"] != "rf"]
    record.write_text(json.dumps(data))
    (record.parent / "runs.json.gz").unlink(missing_ok=True)
    stages = _stages(_plan(tmp_path, STAGES="classical-steels classical-expt-gap classical-extended",
                           PUBLISHED_DIR=str(published)))
    assert {k: v[0] for k, v in stages.items()} == {
        "classical-steels": "published", "classical-expt-gap": "new", "classical-extended": "published"}
    again = _stages(_plan(tmp_path, STAGES="classical-extended", PUBLISHED_DIR=str(published), SKIP_PUBLISHED="0"))
    assert {k: v[0] for k, v in again.items()} == {"classical-extended": "new"}
    # steels has run data: with RF and Roost taken out of its record, only they run
    record = published / "matbench" / "matbench_steels" / "record.json"
    assert (record.parent / "runs.json.gz").is_file()
    data = json.loads(record.read_text())
    data["results"] = [r for r in data["results"] if r["model"] not in ("rf", "roost")]
    record.write_text(json.dumps(data))
    steels = _stages(_plan(tmp_path, STAGES="classical-steels fc-steels attention-steels", PUBLISHED_DIR=str(published)))
    assert {k: v[0] for k, v in steels.items()} == {
        "classical-steels": "new, published but rf", "fc-steels": "new, published but roost", "attention-steels": "published"}

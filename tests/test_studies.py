"""Study expansion, aggregation over seeds and the verdict rule, on constructed inputs."""

import math
import os
import shutil

import pandas as pd
import pytest

from simclr_ablations import findings, params, studies, tables


def test_every_study_exists_in_every_preset():
    for preset in params.presets():
        for study in studies.names():
            assert studies.expand(preset, study, n_seeds=1), (preset, study)


def test_augmentation_pairs_and_one_branch_protocol():
    runs = studies.expand("smoke", "augmentations")
    assert len(runs) == 28  # 7 ops: 21 pairs + 7 single ops
    cells = {r.labels()["pair"]: r for r in runs}
    assert cells["crop+color"].params["augment"]["ops"] == ["crop", "color"]
    assert cells["rotate"].params["augment"]["ops"] == ["rotate"]
    assert all(r.params["augment"]["branches"] == "one" for r in runs)


def test_shrink_and_seeds():
    cpu = studies.expand("cpu", "encoder")
    depths = {r.labels()["depth"] for r in cpu}
    assert depths == {"R10", "R18"} and {r.seed for r in cpu} == {0, 1, 2}
    assert {r.seed for r in studies.expand("cpu", "encoder", n_seeds=1)} == {0}
    assert len(studies.expand("cifar10", "batch_epochs")) == 2 * 4 * 3 * 3


def test_shared_runs_are_identified_once():
    runs = studies.expand("smoke")
    unique = studies.unique(runs)
    assert len(unique) < len(runs)
    none = [r for r in runs if r.study == "projection_head" and r.labels()["head"] == "None"]
    assert len({r.id for r in none}) == 1  # the head's output dim does not matter without a head
    seeds = [r for r in studies.expand("cpu", "losses") if r.labels()["setting"] == "NT-Xent t=0.5"]
    assert len({r.id for r in seeds}) == 3  # but the seed does


def test_extra_settings_apply_to_every_run_and_bad_ones_fail_with_the_cell():
    runs = studies.expand("smoke", "temperature", ("data.dataset=cifar10",))
    assert all(r.params["data"]["dataset"] == "cifar10" for r in runs)
    with pytest.raises(params.ParamsError, match="study 'temperature'.*data.dataset"):
        studies.expand("smoke", "temperature", ("data.dataset=mnist",))


def test_aggregate_against_hand_computed_values():
    df = pd.DataFrame({"cell": ["a", "a", "a", "b"], "seed": [0, 1, 2, 0], "run_id": ["1", "2", "3", "4"],
                       "settings": ["x seed=0", "x seed=1", "x seed=2", "y seed=0"]})
    for m in tables.METRICS:
        df[m] = [60.0, 62.0, 67.0, 50.0]
    agg = tables.aggregate(df, ["cell"]).set_index("cell")
    assert agg.loc["a", "top1_mean"] == pytest.approx(63.0)
    assert agg.loc["a", "top1_std"] == pytest.approx(math.sqrt(((3**2) + 1**2 + 4**2) / 2))  # sample std
    assert agg.loc["a", "n"] == 3 and agg.loc["b", "n"] == 1 and math.isnan(agg.loc["b", "top1_std"])
    assert agg.loc["a", "run_ids"] == "1 2 3" and agg.loc["a", "settings"] == "x"
    assert tables.fmt(63.0, 3.6056, 3) == "63.0 ± 3.6" and tables.fmt(50.0, float("nan"), 1) == "50.0"


@pytest.mark.parametrize("a, b, expected", [
    ([70, 71, 72], [60, 61, 62], "reproduced"),  # clear win
    ([60, 61, 62], [70, 71, 72], "not reproduced"),  # clear loss
    ([70, 60, 66], [65, 66, 64], "inconclusive"),  # differences +5, -6, +2: within the spread
    ([70], [60], "inconclusive (1 seed)"),  # one seed is never "reproduced"
])
def test_verdict_rule(a, b, expected):
    v, mean, se, n = findings.verdict(pd.Series(a, dtype=float), pd.Series(b, dtype=float))
    assert v == expected and n == len(a)
    assert mean == pytest.approx(sum(a) / len(a) - sum(b) / len(b))


def test_verdict_is_paired_over_seeds():
    # a 1-point gap that holds at every seed is reproduced, although each side spreads 20 points
    a = pd.Series([50.0, 70.1, 89.9])
    b = pd.Series([49.0, 69.0, 89.0])
    assert a.std() > 15 and findings.verdict(a, b)[0] == "reproduced"
    # the same values with the seeds shuffled on one side no longer pair up
    assert findings.verdict(a, pd.Series([89.0, 49.0, 69.0]))[0] == "inconclusive"


def test_plan_cache_returns_the_expansion_and_follows_the_params(tmp_path, monkeypatch):
    """studies.plan: the first call writes the cache, the next loads equal runs from it (without
    expanding again); a changed params file is a new key; a damaged cache file is expanded again."""
    fresh = {"temperature": studies.expand("smoke", "temperature")}
    assert studies.plan("smoke", ["temperature"], cache_dir=tmp_path) == fresh
    (cached,) = tmp_path.glob("plan-*.json")
    calls = []
    real = studies.expand
    monkeypatch.setattr(studies, "expand", lambda *a, **k: calls.append(a) or real(*a, **k))
    again = studies.plan("smoke", ["temperature"], cache_dir=tmp_path)
    assert again == fresh and not calls
    assert [r.params for r in again["temperature"]] == [r.params for r in fresh["temperature"]]
    assert studies.plan_key("smoke", ["temperature"], (), 0) != studies.plan_key("smoke", ["temperature"], (), 2)
    cached.write_text("{not json")
    assert studies.plan("smoke", ["temperature"], cache_dir=tmp_path) == fresh and calls
    assert not list(tmp_path.glob(".*.tmp"))
    for n in range(studies.PLANS_KEPT + 2):  # old plans are pruned
        (tmp_path / f"plan-old{n}.json").write_text("{}")
        os.utime(tmp_path / f"plan-old{n}.json", (n, n))
    cached.unlink()
    studies.plan("smoke", ["temperature"], cache_dir=tmp_path)
    assert len(list(tmp_path.glob("plan-*.json"))) == studies.PLANS_KEPT and cached.exists()

    default = params.PARAMS_DIR / "default.yaml"
    key = studies.plan_key("smoke", ["temperature"], (), 0)
    monkeypatch.setattr(params, "PARAMS_DIR", tmp_path / "params")
    shutil.copytree(default.parent, tmp_path / "params")
    assert studies.plan_key("smoke", ["temperature"], (), 0) == key
    with open(tmp_path / "params" / "default.yaml", "a") as f:
        f.write("\n# edited\n")
    assert studies.plan_key("smoke", ["temperature"], (), 0) != key


def test_base_for_a_preset_applies_on_top_of_base():
    cpu = {tuple(r.params["eval"]["semi"]["fractions"]) for r in studies.expand("cpu", "methods")}
    smoke = {tuple(r.params["eval"]["semi"]["fractions"]) for r in studies.expand("smoke", "methods")}
    assert cpu == {(0.01,)} and smoke == {(0.01, 0.1)}


def test_seeds_for_gives_one_study_its_own_number_of_seeds(tmp_path, monkeypatch):
    assert {r.seed for r in studies.expand("cpu", "projection_head")} == set(range(5))  # studies.yaml: seeds_for
    shutil.copytree(params.PARAMS_DIR, tmp_path / "params")
    monkeypatch.setattr(params, "PARAMS_DIR", tmp_path / "params")
    path = tmp_path / "params" / "studies.yaml"
    text = path.read_text()
    assert "\n  temperature:\n" in text
    path.write_text(text.replace("\n  temperature:\n", "\n  temperature:\n    seeds_for: {cpu: 4}\n"))
    assert {r.seed for r in studies.expand("cpu", "temperature")} == set(range(4))
    assert {r.seed for r in studies.expand("cpu", "losses")} == {0, 1, 2}  # seeds[cpu]
    assert {r.seed for r in studies.expand("smoke", "temperature")} == {0}  # other presets keep theirs
    assert {r.seed for r in studies.expand("cpu", "temperature", n_seeds=2)} == {0, 1}  # --config seeds wins
    path.write_text(text.replace("\n  temperature:\n", "\n  temperature:\n    seeds_for: {cpu: -1}\n"))
    with pytest.raises(params.ParamsError, match=r"temperature\.seeds_for\.cpu = -1; allowed: an integer >= 1"):
        studies.expand("cpu", "temperature")


def test_a_per_preset_section_naming_no_preset_is_refused(tmp_path, monkeypatch):
    """A typo such as `shrink: {cpuu: ...}` would otherwise leave the preset's full grid running."""
    shutil.copytree(params.PARAMS_DIR, tmp_path / "params")
    monkeypatch.setattr(params, "PARAMS_DIR", tmp_path / "params")
    path = tmp_path / "params" / "studies.yaml"
    text = path.read_text()
    for section, value in (("shrink", "{cpuu: {encoder: [\"preset encoder\"]}}"), ("base_for", "{cpuu: {seed: 1}}"),
                           ("seeds_for", "{cpuu: 4}")):
        path.write_text(text.replace("\n  untrained:\n", f"\n  untrained:\n    {section}: {value}\n"))
        with pytest.raises(params.ParamsError, match=rf"untrained\.{section} names unknown presets \['cpuu'\]; "
                                                     r"allowed: cifar10, cpu, imagenet"):
            studies.expand("cpu", "untrained")
    path.write_text(text.replace("seeds: {smoke: 1,", "seeds: {smok: 2, smoke: 1,"))
    with pytest.raises(params.ParamsError, match=r"seeds names unknown presets \['smok'\]"):
        studies.expand("cpu", "untrained")

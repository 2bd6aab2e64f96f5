"""Hyperparameter search: the space checked against the model's settings, pruning, the budget, resuming a killed
search, the best settings retrained and tested once, and the whole `seqrec tune` flow on small sessions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml

from seqrec import cli, io
from seqrec.config import ConfigError, ParamSpec, load_config
from seqrec.pipeline import tuning as T
from seqrec.pipeline.models import save_split


# --------------------------------------------------------------------------- data
def write_tsv(path, sessions: list[list[int]], start: float) -> None:
    """Write sessions as a GRU4Rec TSV, one minute between events, a day between sessions' starts / 48."""
    lines = ["SessionId\tItemId\tTime"]
    for s, items in enumerate(sessions):
        t0 = start + s * 1800
        lines += [f"{s + int(start)}\t{item}\t{int(t0 + 60 * j)}" for j, item in enumerate(items)]
    path.write_text("\n".join(lines) + "\n")


def chain_sessions(n: int, items: int, seed: int) -> list[list[int]]:
    """Return sessions that walk item i -> i + 1 (mod ``items``) with a little noise: a next item a model can learn."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        cur, walk = int(rng.integers(items)), []
        for _ in range(int(rng.integers(3, 8))):
            walk.append(cur + 1)
            cur = (cur + 1) % items if rng.random() < 0.9 else int(rng.integers(items))
        out.append(walk)
    return out


@pytest.fixture(scope="module")
def tsv_pair(tmp_path_factory):
    """Train / test GRU4Rec TSVs: 400 training sessions over 10 days, 60 test sessions on the day after."""
    d = tmp_path_factory.mktemp("tsv")
    write_tsv(d / "train.tsv", chain_sessions(480, 30, 0), 1_600_000_000)
    write_tsv(d / "test.tsv", chain_sessions(48, 30, 1), 1_600_000_000 + 480 * 1800 + 3600)
    return d / "train.tsv", d / "test.tsv"


@pytest.fixture()
def split_dir(tsv_pair, tmp_path):
    """A split of the pair (valid: the training part's last day)."""
    from seqrec.data.importers import import_gru4rec_tsv
    from seqrec.evaluation.splits import split_presplit

    split = split_presplit(import_gru4rec_tsv(tsv_pair[0]), import_gru4rec_tsv(tsv_pair[1]), 1.0)
    return save_split(split, str(tmp_path / "split"))["split_dir"]


def config(tmp_path, *sets: str):
    """Return a config writing under ``tmp_path``, small and quiet, with ``sets`` on top."""
    return load_config(None, [f"output.root={tmp_path / 'out'}", "training.progress=false", "training.threads=1",
                              "models.gru4rec.batch_size=16", "models.gru4rec.n_sample=0", "models.gru4rec.hidden=16",
                              *sets])


# --------------------------------------------------------------------------- the space
@pytest.mark.parametrize("spec, message", [
    ({"low": 0, "high": 1, "log": True}, "log range needs low > 0"),
    ({"low": 1, "high": 1}, "below high"),
    ({"type": "int", "low": 1.5, "high": 4}, "whole"),
    ({"choices": [], }, "non-empty"),
    ({"choices": ["a"], "low": 1}, "no low/high"),
    ({"low": 1}, "needs 'low' and 'high'"),
])
def test_impossible_ranges_are_refused_naming_the_problem(spec, message):
    with pytest.raises(ValueError, match=message):
        ParamSpec.model_validate(spec)


def test_a_space_key_or_value_the_model_does_not_have_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"tuning.space.hiddn: models.gru4rec has no setting 'hiddn'"):
        T.search_space("gru4rec", config(tmp_path, "tuning.space={hiddn: {type: int, low: 8, high: 64}}"))
    with pytest.raises(ConfigError, match=r"tuning.space.loss: value 'hinge' is not a valid models.gru4rec.loss"):
        T.search_space("gru4rec", config(tmp_path, "tuning.space={loss: {choices: [bpr-max, hinge]}}"))
    with pytest.raises(ConfigError, match=r"tuning.space.dropout_hidden: value 1.0 is not a valid"):
        T.search_space("gru4rec", config(tmp_path, "tuning.space={dropout_hidden: {low: 0.0, high: 1.0}}"))
    with pytest.raises(ConfigError, match="no default search space for markov|has no settings"):
        T.search_space("markov", config(tmp_path))


@pytest.mark.parametrize("model", ["gru4rec", "sasrec", "itemknn", "sknn", "bprmf"])
def test_every_default_space_is_valid_for_its_model(model, tmp_path):
    space = T.search_space(model, config(tmp_path))
    assert space and all(isinstance(s, ParamSpec) for s in space.values())


CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("search/*.yaml")), ids=lambda p: p.name)
def test_shipped_search_configs_declare_valid_spaces(path):
    model = path.stem.split("-")[0]  # search/MODEL-*.yaml
    space = T.search_space(model, load_config(path))
    assert len(space) >= 5 and set(space) == set(yaml.safe_load(path.read_text())["tuning"]["space"])


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("presets/*.yaml")), ids=lambda p: p.name)
def test_presets_load_and_train_fixed_epochs(path):
    cfg, raw = load_config(path), yaml.safe_load(path.read_text())
    model = path.stem.split("-")[0]  # presets/MODEL-*.yaml
    assert set(raw["models"]) == {model} and raw["models"][model]["epochs"] >= 1
    assert cfg.training.patience == 0  # a preset carries its epochs: no validation data needed
    section = getattr(cfg.models, model)
    assert all(getattr(section, key) == value for key, value in raw["models"][model].items())


def test_distributions_keep_types_scales_and_steps(tmp_path):
    space = T.search_space("gru4rec", config(tmp_path, "tuning.space={hidden: {type: int, low: 32, high: 512, step: 32}, "
                                                       "lr: {low: 0.01, high: 0.5, log: true}, loss: {choices: [bpr-max, cross-entropy]}}"))
    d = T.distributions(space)
    assert isinstance(d["hidden"], optuna.distributions.IntDistribution) and (d["hidden"].low, d["hidden"].high, d["hidden"].step) == (32, 512, 32)
    assert isinstance(d["lr"], optuna.distributions.FloatDistribution) and d["lr"].log
    assert d["loss"].choices == ("bpr-max", "cross-entropy")


# --------------------------------------------------------------------------- pruning, budget, resume
def test_a_trial_behind_the_median_is_pruned_after_its_warmup():
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=1))
    first = study.ask()
    for epoch, value in enumerate((0.5, 0.6, 0.7)):
        first.report(value, epoch)
    study.tell(first, 0.7)
    behind = T.PruningValidator(iter([0.1, 0.2, 0.3]).__next__, study.ask())
    assert behind() == 0.1  # epoch 0 is the warm-up: never pruned
    with pytest.raises(optuna.TrialPruned, match="epoch 2: valid 0.2000"):
        behind()
    ahead = T.PruningValidator(iter([0.9, 0.9]).__next__, study.ask())
    assert ahead() == ahead() == 0.9
    assert behind.curve == [0.1, 0.2]


def test_a_killed_search_is_resumed_its_running_trial_asked_again(split_dir, tmp_path):
    cfg = config(tmp_path, "tuning.trials=2", "tuning.space={hidden: {type: int, low: 8, high: 64}}",
                 "models.gru4rec.epochs=1")
    out = str(tmp_path / "search")
    T.open_search("gru4rec", split_dir, cfg, out)
    killed = T.load_study("gru4rec", cfg, out).ask(T.distributions(T.search_space("gru4rec", cfg)))  # left RUNNING
    assert T.trials_left("gru4rec", cfg, out) == 2
    search = T.open_search("gru4rec", split_dir, cfg, out)
    assert search["requeued"] == [killed.number] and search["counted"] == 0
    row = T.run_trial("gru4rec", 1, split_dir, cfg, out)
    assert row["state"] == "COMPLETE" and row["params"] == killed.params and row["number"] == killed.number + 1
    study = T.load_study("gru4rec", cfg, out)
    assert study.trials[killed.number].state.name == "FAIL" and study.trials[killed.number].user_attrs[T.INTERRUPTED]
    assert T.trials_left("gru4rec", cfg, out) == 1  # the interrupted trial does not count against the budget
    with pytest.raises(ConfigError, match="was started with another space"):
        T.open_search("gru4rec", split_dir, config(tmp_path, "tuning.space={hidden: {type: int, low: 8, high: 32}}"), out)


def test_impossible_combinations_fail_the_trial_not_the_search(split_dir, tmp_path):
    cfg = config(tmp_path, "tuning.space={final_act: {choices: [tanh]}, repeat_first: {choices: [true]}}",
                 "models.gru4rec.epochs=1")
    out = str(tmp_path / "search")
    T.open_search("gru4rec", split_dir, cfg, out)
    row = T.run_trial("gru4rec", 0, split_dir, cfg, out)
    assert row["state"] == "FAIL" and "repeat_first=true needs final_act=linear" in row["error"]
    assert T.trials_left("gru4rec", load_config(None, [f"output.root={tmp_path}", "tuning.trials=3"]), out) == 2
    with pytest.raises(ConfigError, match="no finished trial"):
        T.best_settings("gru4rec", cfg, out)


@pytest.mark.parametrize("model, space", [("itemknn", "{neighbours: {type: int, low: 5, high: 50}}"),
                                          ("bprmf", "{factors: {choices: [8, 16]}}")])
def test_models_without_epochs_are_scored_once_on_valid(model, space, split_dir, tmp_path):
    from seqrec.evaluation.metrics import make_validator
    from seqrec.models.factory import build_model, model_section

    cfg = config(tmp_path, f"tuning.space={space}", "models.bprmf.epochs=2")
    out = str(tmp_path / "search")
    T.open_search(model, split_dir, cfg, out)
    row = T.run_trial(model, 0, split_dir, cfg, out)
    assert row["state"] == "COMPLETE" and row["best_epoch"] == 0
    # the same settings fitted by hand score the same on valid
    tcfg = T.trial_config(model, cfg, row["params"])
    fitted = build_model(model, model_section(tcfg.models, model), tcfg.training).fit(io.load_sessions(f"{split_dir}/train.npz"))
    valid = io.load_sessions(f"{split_dir}/valid.npz")
    assert row["value"] == pytest.approx(make_validator(fitted, valid, tcfg.evaluation, "recall@20")())


def test_a_trial_is_scored_on_valid_and_its_best_epoch_kept(split_dir, tmp_path):
    cfg = config(tmp_path, "tuning.space={lr: {low: 0.05, high: 0.2}}", "models.gru4rec.epochs=3", "training.patience=0")
    out = str(tmp_path / "search")
    T.open_search("gru4rec", split_dir, cfg, out)
    row = T.run_trial("gru4rec", 0, split_dir, cfg, out)
    trial = T.load_study("gru4rec", cfg, out).trials[0]
    curve = [trial.intermediate_values[e] for e in range(3)]
    assert row["state"] == "COMPLETE" and row["epochs"] == 3
    assert row["value"] == pytest.approx(max(curve)) and row["best_epoch"] == int(np.argmax(curve)) + 1
    best = T.best_settings("gru4rec", cfg, out)
    assert best["settings"] == {"lr": trial.params["lr"], "epochs": row["best_epoch"]}
    assert not list((tmp_path / "search" / "trials" / "checkpoints").glob("*.ckpt"))  # trial checkpoints removed


# --------------------------------------------------------------------------- the flow, end to end
@pytest.mark.slow
def test_seqrec_tune_searches_tests_once_reports_and_resumes(prefect_harness, tsv_pair, tmp_path, capsys):
    train, test = tsv_pair
    space = "tuning.space={hidden: {type: int, low: 8, high: 32, step: 8}, lr: {low: 0.02, high: 0.3, log: true}}"
    argv = ["tune", "gru4rec", "--train", str(train), "--test", str(test), "--trials", "3", "--json",
            "--set", f"output.root={tmp_path / 'out'}", "--set", "training.progress=false", "--set", "models.gru4rec.epochs=2",
            "--set", "models.gru4rec.batch_size=16", "--set", "models.gru4rec.n_sample=0", "--set", space]
    assert cli.main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["states"]["COMPLETE"] + result["states"]["PRUNED"] == 3 and result["counted"] == 3
    rows = io.read_json(result["json"])["trials_table"]
    finished = [r for r in rows if r["state"] == "COMPLETE"]
    assert result["best"]["value"] == pytest.approx(max(r["valid"] for r in finished))
    # the best settings as a --config file: the model retrained with them is the one the search tested
    best_cfg = load_config(result["best_config"])
    assert best_cfg.models.gru4rec.hidden == result["best"]["settings"]["hidden"]
    assert best_cfg.models.gru4rec.epochs == result["best"]["settings"]["epochs"] <= 2
    test_metrics = result["test"]["metrics"]
    assert 0 < test_metrics["recall@20"] <= 1 and result["test"]["protocol"]["catalogue_size"] == 30
    assert cli.main(["evaluate", result["test"]["path"], "--split", result["test"]["split_dir"], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["recall@20"] == pytest.approx(test_metrics["recall@20"])
    md = open(result["markdown"]).read()
    assert "## Best trial" in md and "## Trials" in md and "touched once" in md and "lr" in md
    # more budget on the same study: only the new trials run
    assert cli.main([*[a if a != "3" else "4" for a in argv]]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["trials"] == 4 and again["counted"] == 4 and again["resumed"] == []


@pytest.mark.slow
def test_parallel_trials_run_in_two_dask_worker_processes(prefect_harness, split_dir, tmp_path):
    import os

    from flows.tune import tune_flow

    cfg = config(tmp_path, "tuning.parallel=2", "tuning.trials=2", "tuning.retrain_best=false", "models.gru4rec.epochs=1",
                 "tuning.space={hidden: {type: int, low: 8, high: 64}}")
    result = tune_flow("gru4rec", split_dir, cfg)
    workers = {row["worker"] for row in result["rows"]}
    assert len(workers) == 2 and all(not w.endswith(f":{os.getpid()}") for w in workers)
    assert result["states"]["COMPLETE"] == 2 and result["test"] is None
    assert len({row["params"]["hidden"] for row in result["rows"]}) == 2  # the two slots' samplers drew apart


def test_tune_needs_a_split_or_files(tmp_path, capsys):
    assert cli.main(["tune", "gru4rec", "--set", f"output.root={tmp_path}"]) == 2
    assert "needs either --split DIR or --train FILE" in capsys.readouterr().err
    assert cli.main(["tune", "gru4rec", "--split", str(tmp_path)]) == 1
    assert "not a split directory" in capsys.readouterr().err


def test_parallel_trials_get_a_share_of_the_cores_each(tmp_path):
    import os

    cfg = T.worker_config(config(tmp_path, "tuning.parallel=2", "training.threads=0"))
    assert cfg.training.threads == max(1, (os.cpu_count() or 1) // 2)
    same = config(tmp_path, "tuning.parallel=2")
    assert T.worker_config(same) is same  # threads already set: kept


def test_best_yaml_is_a_valid_config_naming_the_trial(tmp_path):
    cfg = config(tmp_path)
    text = T.best_config_yaml("gru4rec", cfg, {"number": 7, "value": 0.5, "settings": {"hidden": 64, "epochs": 3}})
    assert "trial 7" in text and yaml.safe_load(text) == {"models": {"gru4rec": {"epochs": 3, "hidden": 64}}}

"""Hyperparameter search stages: the study in a database, one trial, the best trial retrained, the search's report.

A search tunes the settings of one model (``models.<model>``) over a declared space (``tuning.space``, or the model's
default in ``seqrec/models/spaces/<model>.yaml``). Every trial trains on the split's ``train`` part and is scored on
``valid`` by ``training.valid_metric`` after each epoch (neural models), so the pruner can stop it early; test data is
touched once, by the best configuration retrained on ``train_full`` (train + valid) for its best epoch count.

The study lives in a database (SQLite in the search's folder unless ``tuning.storage`` names one), so a killed search
resumes: trials it left running are marked failed (``interrupted``) and their settings asked again first; the trial
budget counts the finished, pruned and failed trials already stored. Each trial asks the study itself, so trials can
run side by side in other processes; its sampler is seeded by the trial's slot (the how-many-th trial of the search).
"""

from __future__ import annotations

import math
import os
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import yaml
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from pydantic import ValidationError

from seqrec import io
from seqrec.config import NEURAL_MODELS, ConfigError, ParamSpec, SeqrecConfig, config_to_dict
from seqrec.evaluation.metrics import make_validator
from seqrec.models.factory import model_section
from seqrec.pipeline import models as stages

SPACES = Path(__file__).resolve().parents[1] / "models" / "spaces"
INTERRUPTED = "interrupted"  # user attribute of a trial a killed search left running

optuna.logging.set_verbosity(optuna.logging.WARNING)  # the trial table and progress lines say what Optuna's INFO lines do


# --------------------------------------------------------------------------- the space
def search_space(model: str, cfg: SeqrecConfig) -> dict[str, ParamSpec]:
    """Return the space to search for ``model``: ``tuning.space``, or its default file; every key checked against
    ``models.<model>`` (a setting it has, each choice and both ends of each range valid for it)."""
    section = model_section(cfg.models, model)
    if section is None:
        raise ConfigError(f"model {model} has no settings to tune")
    space = dict(cfg.tuning.space)
    if not space:
        path = SPACES / f"{model}.yaml"
        if not path.is_file():
            raise ConfigError(f"no default search space for {model}: declare one under tuning.space")
        try:
            space = {k: ParamSpec.model_validate(v) for k, v in (yaml.safe_load(path.read_text()) or {}).items()}
        except ValidationError as err:
            raise ConfigError(f"{path}: {err}") from None
    fields = type(section).model_fields
    for key, spec in space.items():
        if key not in fields:
            raise ConfigError(f"tuning.space.{key}: models.{model} has no setting '{key}' (it has: {', '.join(fields)})")
        for value in (spec.choices if spec.type == "choice" else (spec.low, spec.high)):
            value = int(value) if spec.type == "int" else value
            try:
                type(section).model_validate({**config_to_dict(section), key: value})
            except ValidationError as err:
                raise ConfigError(f"tuning.space.{key}: value {value!r} is not a valid models.{model}.{key} "
                                  f"({err.errors()[0]['msg']})") from None
    return space


def distributions(space: dict[str, ParamSpec]) -> dict[str, BaseDistribution]:
    """Return Optuna distributions for a space (int ranges as whole numbers, log scales and steps kept)."""
    out: dict[str, BaseDistribution] = {}
    for key, spec in space.items():
        if spec.type == "choice":
            out[key] = CategoricalDistribution(list(spec.choices))
        elif spec.type == "int":
            out[key] = IntDistribution(int(spec.low), int(spec.high), log=spec.log, step=int(spec.step or 1))
        else:
            out[key] = FloatDistribution(spec.low, spec.high, log=spec.log, step=spec.step)
    return out


def trial_config(model: str, cfg: SeqrecConfig, params: dict[str, Any]) -> SeqrecConfig:
    """Return ``cfg`` with ``params`` set under ``models.<model>`` (a ConfigError names an impossible combination)."""
    from seqrec.config import build_config

    return build_config(config_to_dict(cfg), {"models": {model: params}})


# --------------------------------------------------------------------------- the study
def study_location(model: str, cfg: SeqrecConfig, out_dir: str) -> tuple[str, str]:
    """Return (storage URL, study name): ``tuning.storage`` or a SQLite file in ``out_dir``, ``tuning.study_name`` or the model."""
    url = cfg.tuning.storage or f"sqlite:///{(Path(out_dir) / 'study.db').resolve()}"
    return url, cfg.tuning.study_name or model


def storage_of(url: str) -> optuna.storages.RDBStorage:
    """Return the study's database (SQLite waits for a writer instead of failing at once)."""
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


def pruner_of(cfg: SeqrecConfig) -> optuna.pruners.BasePruner:
    """Return the configured pruner (median over trials at the same epoch, successive halving, or none)."""
    t = cfg.tuning
    if t.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=t.startup_trials, n_warmup_steps=t.warmup_epochs)
    if t.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1)
    return optuna.pruners.NopPruner()


def sampler_of(cfg: SeqrecConfig, slot: int) -> optuna.samplers.BaseSampler:
    """Return the configured sampler, seeded by the trial's slot (so parallel trials never propose the same point)."""
    seed = cfg.tuning.seed * 1_000_003 + slot
    if cfg.tuning.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(n_startup_trials=cfg.tuning.startup_trials, seed=seed)


def load_study(model: str, cfg: SeqrecConfig, out_dir: str, slot: int = 0) -> optuna.Study:
    """Return the search's study (created when absent), maximising the validation metric."""
    url, name = study_location(model, cfg, out_dir)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return optuna.create_study(storage=storage_of(url), study_name=name, direction="maximize", load_if_exists=True,
                               sampler=sampler_of(cfg, slot), pruner=pruner_of(cfg))


def open_search(model: str, split_dir: str, cfg: SeqrecConfig, out_dir: str) -> dict[str, Any]:
    """Create or resume the study: trials a killed search left running become failed (``interrupted``) and their
    settings are queued to run first; return where the study is, the space and how many trials count already."""
    space = search_space(model, cfg)
    study = load_study(model, cfg, out_dir)
    previous = study.user_attrs.get("search")
    current = {"model": model, "space": {k: config_to_dict(v) for k, v in space.items()},
               "metric": cfg.training.valid_metric, "split": str(Path(split_dir).resolve())}
    if previous and previous != current:
        changed = sorted(k for k in current if previous.get(k) != current[k])
        raise ConfigError(f"study '{study.study_name}' in {study_location(model, cfg, out_dir)[0]} was started with another "
                          f"{', '.join(changed)}; set tuning.study_name (or another output.run_name) for a new search")
    study.set_user_attr("search", current)
    requeued = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        optuna.trial.Trial(study, trial._trial_id).set_user_attr(INTERRUPTED, True)
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        requeued.append(trial.number)
    url, name = study_location(model, cfg, out_dir)
    return {"model": model, "storage": url, "study_name": name, "out_dir": out_dir, "split_dir": split_dir,
            "counted": counted_trials(study), "slots": len(study.trials), "requeued": requeued,
            "space": current["space"]}


def counted_trials(study: optuna.Study) -> int:
    """Return the trials that count against the budget: finished, pruned, and failed ones not interrupted."""
    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
               or (t.state == TrialState.FAIL and not t.user_attrs.get(INTERRUPTED)))


def trials_left(model: str, cfg: SeqrecConfig, out_dir: str) -> int:
    """Return how many trials the budget (``tuning.trials``) still allows."""
    return max(cfg.tuning.trials - counted_trials(load_study(model, cfg, out_dir)), 0)


# --------------------------------------------------------------------------- one trial
class PruningValidator:
    """Wrap a model's validator: report each epoch's metric to the trial and stop the fit when the pruner says so."""

    def __init__(self, validate, trial: optuna.Trial, first_epoch: int = 0):
        self.validate, self.trial, self.epoch, self.curve = validate, trial, first_epoch, []

    def __call__(self) -> float:
        value = float(self.validate())
        self.trial.report(value, self.epoch)
        self.curve.append(value)
        self.epoch += 1
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"epoch {self.epoch}: valid {value:.4f} below the pruner's bar")
        return value


def epochs_done(ckpt: Path) -> int:
    """Return the epochs a resume checkpoint already holds (0 without one)."""
    return int(io.load_checkpoint(ckpt)["loop"]["epoch"]) if ckpt.is_file() else 0


def run_trial(model: str, slot: int, split_dir: str, cfg: SeqrecConfig, out_dir: str) -> dict[str, Any]:
    """Ask the study for one trial, train it on ``train``, score it on ``valid``, tell the study; return its row.

    A neural model's trial is validated after every epoch (``models.<model>.epochs`` at most, ``training.patience``
    early stopping) and pruned when the pruner finds it behind; its value is its best epoch's metric. A trial whose
    settings are impossible together, or whose training fails, is told failed with the error (the search goes on).
    """
    study = load_study(model, cfg, out_dir, slot)
    trial = study.ask(distributions(search_space(model, cfg)))
    trial.set_user_attr("slot", slot)
    start = time.perf_counter()
    row: dict[str, Any] = {"number": trial.number, "slot": slot, "params": dict(trial.params),
                           "worker": f"{socket.gethostname()}:{os.getpid()}"}  # where it ran (a Dask worker's process)
    checkpoints: list[Path] = []
    try:
        value, best_epoch, epochs = train_trial(model, trial, Path(split_dir), cfg, Path(out_dir) / "trials", checkpoints)
        trial.set_user_attr("best_epoch", best_epoch)
        trial.set_user_attr("epochs", epochs)
        trial.set_user_attr("seconds", round(time.perf_counter() - start, 2))
        study.tell(trial.number, value)
        row.update(state="COMPLETE", value=value, best_epoch=best_epoch, epochs=epochs)
    except optuna.TrialPruned as pruned:
        trial.set_user_attr("seconds", round(time.perf_counter() - start, 2))
        trial.set_user_attr("pruned", str(pruned))
        study.tell(trial.number, state=TrialState.PRUNED)
        row.update(state="PRUNED", value=last_reported(study, trial.number),
                   epochs=len(study.trials[trial.number].intermediate_values))
    except ValueError as err:  # impossible settings together (ConfigError), a diverged fit (NaN validation)
        trial.set_user_attr("error", f"{type(err).__name__}: {err}")
        trial.set_user_attr("seconds", round(time.perf_counter() - start, 2))
        study.tell(trial.number, state=TrialState.FAIL)
        row.update(state="FAIL", error=f"{type(err).__name__}: {err}")
    finally:
        for ckpt in checkpoints:
            ckpt.unlink(missing_ok=True)
    row["seconds"] = round(time.perf_counter() - start, 2)
    return row


def train_trial(model: str, trial: optuna.Trial, split: Path, cfg: SeqrecConfig, out: Path,
                checkpoints: list[Path]) -> tuple[float, int, int]:
    """Train the trial's settings on ``train`` (resuming its checkpoint, added to ``checkpoints``), reporting ``valid``
    after every epoch; return (value, best epoch counted from 1, epochs trained); models without epochs score once."""
    tcfg = trial_config(model, cfg, trial.params)
    section, metric = model_section(tcfg.models, model), tcfg.training.valid_metric
    train, valid = io.load_sessions(split / "train.npz"), io.load_sessions(split / "valid.npz")
    if valid.n_sessions == 0:
        raise ConfigError(f"{split / 'valid.npz'}: the validation part is empty; a search needs validation data")
    ckpt = stages.checkpoint_path(out, model, split / "train.npz", section, tcfg.training, None)
    checkpoints.append(ckpt)
    done = epochs_done(ckpt)  # a retried trial resumes its checkpoint; its epochs are reported from there on
    wrapped: list[PruningValidator] = []

    def validator(m):
        wrapped.append(PruningValidator(make_validator(m, valid, tcfg.evaluation, metric), trial, done))
        return wrapped[-1]

    neural = model in NEURAL_MODELS
    fitted = stages.fit_model(model, section, tcfg.training, ckpt, train, None, validator if neural else None)
    if neural:  # validated after every epoch
        return best_epoch_of(fitted)
    value = make_validator(fitted, valid, tcfg.evaluation, metric)()
    trial.report(value, 0)
    return value, 0, 0


def best_epoch_of(fitted) -> tuple[float, int, int]:
    """Return (best validation metric, its epoch counted from 1, epochs trained) of a model validated every epoch."""
    curve = list(fitted.history.valid_metric)
    best = int(np.nanargmax(curve))
    return float(curve[best]), best + 1, len(curve)


def last_reported(study: optuna.Study, number: int) -> float:
    """Return the last metric a trial reported (NaN without one)."""
    values = study.trials[number].intermediate_values
    return float(values[max(values)]) if values else math.nan


# --------------------------------------------------------------------------- the best trial, the report
def best_settings(model: str, cfg: SeqrecConfig, out_dir: str) -> dict[str, Any]:
    """Return the best finished trial's number, value and settings (a neural model's epochs: its best epoch)."""
    study = load_study(model, cfg, out_dir)
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        raise ConfigError(f"study '{study.study_name}' has no finished trial yet (all pruned or failed): "
                          "raise tuning.trials or loosen the pruner (tuning.pruner, tuning.warmup_epochs)")
    best = max(done, key=lambda t: (t.value, -t.number))
    settings = dict(best.params)
    if best.user_attrs.get("best_epoch"):
        settings["epochs"] = int(best.user_attrs["best_epoch"])
    return {"number": best.number, "value": float(best.value), "settings": settings}


def retrain_best(model: str, split_dir: str, cfg: SeqrecConfig, out_dir: str) -> dict[str, Any]:
    """Retrain the best settings on ``train_full`` (train + valid) for the best trial's epochs, no early stopping, and
    evaluate that model on test: the one time a search touches test data."""
    from seqrec.config import build_config

    best = best_settings(model, cfg, out_dir)
    tcfg = build_config(config_to_dict(cfg), {"models": {model: best["settings"]}, "training": {"patience": 0}})
    trained = stages.train_model(model, split_dir, model_section(tcfg.models, model), tcfg.training, tcfg.evaluation,
                                 str(Path(out_dir) / "best"))
    result = stages.evaluate_trained(trained, split_dir, tcfg.evaluation)
    return {"trial": best["number"], "valid": best["value"], "settings": best["settings"], "path": trained["path"],
            "split_dir": split_dir,
            "train_seconds": trained["train_seconds"], "metrics": result["metrics"], "protocol": result["protocol"],
            "n_targets": result.get("n_targets")}


def best_config_yaml(model: str, cfg: SeqrecConfig, best: dict[str, Any]) -> str:
    """Return the best settings as a ready ``--config`` file (with the search it came from in comments)."""
    head = (f"# Best of `seqrec tune {model}`: trial {best['number']}, valid {cfg.training.valid_metric} {best['value']:.4f}.\n"
            f"# Use: seqrec train {model} --config THIS_FILE ... (epochs: the trial's best epoch; no early stopping needed)\n")
    return head + yaml.safe_dump({"models": {model: best["settings"]}}, sort_keys=True)


def write_search_report(model: str, cfg: SeqrecConfig, out_dir: str, final: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the search's report (``tune.md``, ``tune.html``, ``tune.json``), the best settings as ``best.yaml`` and the
    plot ``search.png``; return their paths and the summary."""
    from seqrec.evaluation import search_report as R

    study, out = load_study(model, cfg, out_dir), Path(out_dir)
    url, name = study_location(model, cfg, out_dir)
    rows, weights = R.trial_rows(study, INTERRUPTED), R.importances(study)
    states = {s: sum(1 for t in study.trials if t.state.name == s) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    best = best_settings(model, cfg, out_dir) if states["COMPLETE"] else None
    best_text = best_config_yaml(model, cfg, best) if best else None
    best_yaml = io.write_text(best_text, out / "best.yaml") if best else None
    png = io.write_bytes(R.plot_search(study, cfg.training.valid_metric), out / "search.png")
    summary = {"model": model, "study": name, "storage": url, "metric": cfg.training.valid_metric, "trials": len(study.trials),
               "states": states, "counted": counted_trials(study), "budget": cfg.tuning.trials, "sampler": cfg.tuning.sampler,
               "pruner": cfg.tuning.pruner, "best": best, "importances": weights, "test": final,
               "best_config": str(best_yaml) if best_yaml else None}
    md = io.write_text(R.render_markdown(summary, rows, best_text, png.name), out / "tune.md")
    page = io.write_text(R.render_html(summary, rows, best_text, png.read_bytes()), out / "tune.html")
    data = io.write_json({**summary, "trials_table": rows}, out / "tune.json")
    return {**summary, "markdown": str(md), "html": str(page), "json": str(data), "plot": str(png)}


def search_rows(model: str, cfg: SeqrecConfig, out_dir: str) -> list[dict[str, Any]]:
    """Return the search's trial table (one row per trial, errors left out): the Prefect table artifact."""
    from seqrec.evaluation.search_report import trial_rows

    return [{k: v for k, v in row.items() if k != "error"} for row in trial_rows(load_study(model, cfg, out_dir), INTERRUPTED)]


def worker_config(cfg: SeqrecConfig) -> SeqrecConfig:
    """Return the config trials run with: with trials side by side and ``training.threads`` unset, each trial's torch
    pool gets its share of this machine's cores (no oversubscription); otherwise ``cfg`` itself."""
    from seqrec.config import build_config

    if cfg.tuning.parallel <= 1 or cfg.training.threads or cfg.data.dask_address:
        return cfg
    share = max(1, (os.cpu_count() or 1) // cfg.tuning.parallel)
    return build_config(config_to_dict(cfg), {"training": {"threads": share}})

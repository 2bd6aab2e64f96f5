"""Bad configuration fails before any work, naming the key and the value; config paths are checked."""

from __future__ import annotations


import pytest

from seqrec import cli
from seqrec.pipeline import data as stages
from seqrec.config import ConfigError, load_config


@pytest.mark.parametrize("overrides, message", [
    # wrong type
    (["models.gru4rec.hidden=abc"], "config key 'models.gru4rec.hidden' = 'abc': Input should be a valid integer"),
    (["data.on_bad_partition=ignore"], "config key 'data.on_bad_partition' = 'ignore': Input should be 'fail' or 'skip'"),
    # unknown keys, at the top and deep inside
    (["trainig.device=cpu"], "unknown config key 'trainig'"),
    (["models.gru4rec.hidden_size=64"], "unknown config key 'models.gru4rec.hidden_size'"),
    # negative and zero sizes
    (["models.gru4rec.batch_size=-4"], "config key 'models.gru4rec.batch_size' = -4: Input should be greater than 0"),
    (["generator.days=0"], "config key 'generator.days' = 0: Input should be greater than 0"),
    (["evaluation.cutoffs=[0, 10]"], "evaluation.cutoffs=(0, 10) must be positive integers"),
    # impossible day range
    (["data.first_day=1300", "data.last_day=1290"], "data.first_day=1300 is after data.last_day=1290"),
    # a key that is a value, used as a section
    (["data.root.x=1"], "config key 'data.root'"),
    (["training"], "override 'training' is not of the form key.path=value"),
])
def test_bad_override_names_key_and_value(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert message in str(info.value)


def test_bad_yaml_file_names_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  read_retries: -1\n  dask_workers: two\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)  # every problem is named, not only the first
    assert "config key 'data.read_retries' = -1" in text and "config key 'data.dask_workers' = 'two'" in text
    with pytest.raises(ConfigError, match=f"config file {tmp_path / 'missing.yaml'} does not exist"):
        load_config(tmp_path / "missing.yaml")
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping, got list"):
        load_config(path)


def test_cli_exits_2_before_any_work(tmp_path, capsys):
    out = tmp_path / "outputs"
    code = cli.main(["run", "--set", f"output.root={out}", "--set", "data.first_day=9", "--set", "data.last_day=3"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("seqrec: configuration error: ") and "data.first_day=9 is after data.last_day=3" in err
    assert not out.exists()  # no run directory, no lock, no generated data


def test_valid_metric_outside_cutoffs_is_a_config_error():
    with pytest.raises(ConfigError, match="training.valid_metric"):
        load_config(None, ["training.valid_metric=recall@50", "evaluation.cutoffs=[5, 10]"])


@pytest.mark.parametrize("off", ["features.build_embeddings=false", "features.build_graph=false"])
def test_warm_start_without_embeddings_is_a_config_error(off):
    key = off.split("=")[0]
    with pytest.raises(ConfigError, match=rf"models.sasrec.init_from_embeddings=true .*{key}=false"):
        load_config(None, ["models.names=[sasrec]", "models.sasrec.init_from_embeddings=true", off])
    load_config(None, ["models.names=[gru4rec]", "models.sasrec.init_from_embeddings=true", off])  # sasrec not trained: fine


def test_warm_start_gets_the_pipeline_embeddings_only_when_asked(tmp_path, capsys):
    from seqrec.config import SasRecConfig
    from seqrec.pipeline.models import embeddings_for

    built = {"embeddings": {"path": "emb.npz", "history": {}}}
    assert embeddings_for("sasrec", SasRecConfig(init_from_embeddings=True), built) == built["embeddings"]
    assert embeddings_for("sasrec", SasRecConfig(), built) is None and embeddings_for("markov", None, built) is None
    with pytest.raises(ConfigError, match="models.sasrec.init_from_embeddings=true but no item embeddings were built"):
        embeddings_for("sasrec", SasRecConfig(init_from_embeddings=True), {})
    tsv = tmp_path / "train.tsv"
    tsv.write_text("SessionId\tItemId\tTime\n1\t1\t1\n1\t2\t2\n")
    code = cli.main(["train", "sasrec", "--train", str(tsv), "--out", str(tmp_path / "m"),
                     "--set", "models.sasrec.init_from_embeddings=true"])
    assert code == 2 and "models.sasrec.init_from_embeddings=true needs --embeddings FILE" in capsys.readouterr().err


def test_missing_data_root_is_named_resolved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["data.root=raw/../nowhere"])
    with pytest.raises(ConfigError, match=f"'data.root' = '{tmp_path / 'nowhere'}': not a directory"):
        stages.resolve_data_root(cfg)  # the first thing the pipeline does


def test_cli_load_of_a_missing_root_exits_1_naming_the_directory(tmp_path, capsys):
    code = cli.main(["load", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and f"table directory {tmp_path / 'nowhere' / 'marketplace' / 'events'} does not exist" in err

"""What the validate stage hands Great Expectations: Arrow membership flags, day files split by domain, the suite's
columns only; each equal to the plain pandas result it replaces."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from seqrec import io
from seqrec.config import CleaningConfig, QualityConfig, SuiteParams
from seqrec.pipeline.quality import events_by_domain
from seqrec.quality.validate import References, add_check_columns, is_in, suite_columns


@pytest.mark.parametrize("values, known", [
    (pd.Series(["a", "b", None, "z"], dtype="string[pyarrow]"), ["a", "z", "q"]),
    (pd.Series(["a", "b", None, "z"], dtype=object), ["a", "z"]),
    (pd.Series([1.0, np.nan, 3.0, -1.0]), [1, 3, 7]),  # float column, integer ids (brand ids with nulls)
    (pd.Series([1, 2, 3]), ["1", "2"]),  # mismatched types: never members, as in pandas
    (pd.Series(["1", 2, None], dtype=object), ["1", "2"]),  # mixed: pandas' rule
    (pd.Series(["x", "y", "x"], dtype="category"), ["x"]),
])
def test_arrow_membership_equals_pandas_isin(values, known):
    index = pd.Index(known)
    assert is_in(values, pa.array(index, from_pandas=True)).tolist() == values.isin(index).tolist()


def test_reference_sets_are_converted_once():
    refs = References(items={"marketplace": pd.Index(["i1", "i2"]), "retail": pd.Index(["r1"])},
                      brands=pd.Index([1, 2]))
    first = refs.arrow_set("items.marketplace")
    assert refs.arrow_set("items.marketplace") is first and first.to_pylist() == ["i1", "i2"]
    assert refs.arrow_set("items").to_pylist() == ["i1", "i2", "r1"] and refs.arrow_set("brands").to_pylist() == [1, 2]


def test_day_file_split_by_domain_equals_a_group_by(tmp_path):
    df = pd.DataFrame({"timestamp": [5, 1, 3, 2, 4], "user_id": [1, 2, 1, 3, 2],
                       "item_id": ["a", "b", "c", "a", None],
                       "domain": ["retail", "marketplace", "retail", "offers", "marketplace"],
                       "action_type": ["view", "like", None, "view", "view"], "os": ["ios", "web", "ios", None, "web"]})
    path = io.write_table(df, tmp_path / "day.parquet")
    expected = {f"events.{d}": part.drop(columns=["domain"]).reset_index(drop=True)
                for d, part in io.read_table(path).groupby("domain", sort=True)}
    plain = events_by_domain(str(path))
    assert list(plain) == ["events.marketplace", "events.offers", "events.retail"]
    for name, frame in plain.items():
        pd.testing.assert_frame_equal(frame, expected[name])
    coded = events_by_domain(str(path), categorical=("action_type", "os", "subdomain"))  # subdomain: absent, ignored
    assert isinstance(coded["events.retail"]["action_type"].dtype, pd.CategoricalDtype)
    for name, frame in coded.items():
        pd.testing.assert_frame_equal(frame.astype({"action_type": object, "os": object}),
                                      expected[name].astype({"action_type": object, "os": object}))


def test_suite_gets_only_the_columns_it_reads():
    params = SuiteParams.of(QualityConfig(), CleaningConfig())
    df = pd.DataFrame({"timestamp": [1], "user_id": [1], "item_id": ["a"], "action_type": ["view"], "os": ["ios"],
                       "subdomain": ["catalog"], "unread": [0]})
    frame, skipped = add_check_columns(df, "events.marketplace", "raw", params, References(items={"marketplace": pd.Index(["a"])}))
    columns = suite_columns(frame, "events.marketplace", "raw", params, skipped)
    assert "unread" not in columns and {"item_known", "repeat_key", "action_type", "subdomain", "os"} <= set(columns)


def test_large_reference_sets_are_looked_up_in_the_distinct_values():
    from seqrec.quality.validate import LARGE_SET

    values = pd.Series(["i3", "b", None, "i77", "i3", "q"], dtype="string[pyarrow]")
    catalogue = pd.Index([f"i{k}" for k in range(LARGE_SET + 10)])  # above the threshold: the distinct-values path
    assert is_in(values, pa.array(catalogue, from_pandas=True)).tolist() == values.isin(catalogue).tolist()
    assert values.isin(catalogue).tolist() == [True, False, False, True, True, False]
    numbers = pd.Series([3.0, np.nan, 1.0, -1.0])
    ids = pd.Index(np.arange(LARGE_SET + 10))
    assert is_in(numbers, pa.array(ids)).tolist() == numbers.isin(ids).tolist() == [True, False, True, False]


def test_large_reference_sets_with_null_empty_and_categorical_columns():
    from seqrec.quality.validate import LARGE_SET

    catalogue = pd.Index([f"i{k}" for k in range(LARGE_SET + 10)])
    known = pa.array(catalogue, from_pandas=True)
    for values in (pd.Series([None, None], dtype="string[pyarrow]"), pd.Series([], dtype="string[pyarrow]"),
                   pd.Series(["i1", None, "x", "i1"], dtype="category")):
        assert is_in(values, known).tolist() == values.isin(catalogue).tolist()


def test_mixed_type_references_fall_back_to_pandas():
    mixed = pd.Index(["a", 1, 2.5], dtype=object)
    refs = References(items={"marketplace": mixed})
    known = refs.arrow_set("items.marketplace")
    values = pd.Series(["a", 1, "b"], dtype=object)
    assert is_in(values, known).tolist() == values.isin(mixed).tolist() == [True, True, False]


def test_categorical_day_columns_give_the_same_findings_and_missingness(tmp_path):
    """A generated day with its defects (nulls, unknown values, duplicates), validated with the low-cardinality columns
    as categoricals and as plain strings: the same check results and missing-value counts."""
    from seqrec.config import DataConfig, GeneratorConfig
    from seqrec.data.ingest_days import ingest_one_day
    from seqrec.pipeline.quality import LOW_CARDINALITY, references_of
    from seqrec.quality.validate import measure_missingness, measure_table
    from seqrec.synthetic.generate import generate_tecd

    root = tmp_path / "raw"
    generate_tecd(root, GeneratorConfig(events=20000, days=1, workers=1, domains=("marketplace", "retail")))
    data = DataConfig(root=root, domains=("marketplace", "retail"))
    day = int(next((root / "marketplace" / "events").glob("*.pq")).stem)
    path = ingest_one_day(str(root), day, data, str(tmp_path / "ingest"))["own"]
    params = SuiteParams.of(QualityConfig(), CleaningConfig())
    refs = references_of(str(root), data.domains)
    plain, coded = events_by_domain(path), events_by_domain(path, categorical=LOW_CARDINALITY)
    findings = 0
    for table in plain:
        a = measure_table(plain[table], table, "raw", params, refs).checks
        b = measure_table(coded[table], table, "raw", params, refs).checks
        assert a == b
        findings += sum(not c.success for c in a)
    assert findings > 0  # the generated defects are found, the same way both times
    pd.testing.assert_frame_equal(measure_missingness(plain, "raw"), measure_missingness(coded, "raw"))

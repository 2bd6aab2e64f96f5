"""Cleaning with full row accounting: tiny tables with known answers, then retention on generated data."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from seqrec import columns as C
from seqrec.quality.cleaning import CleanStep, clean_table, count_reasons, retention_by_table, steps_frame, write_quarantine
from seqrec.config import CleaningConfig, GeneratorConfig, QualityConfig, SuiteParams

CFG = CleaningConfig()


def retail_items() -> pd.DataFrame:
    """Five retail items: two without price (dropped), one without category, one without brand."""
    return pd.DataFrame({
        "item_id": ["fmcg_1", "fmcg_2", "fmcg_3", "fmcg_4", "fmcg_5"],
        "brand_id": [10.0, np.nan, 11.0, 12.0, 13.0],
        "category": ["a", "b", None, "c", "d"],
        "subcategory": ["x", "y", "z", None, "w"],
        "price": [1.5, -0.2, 3.0, np.nan, np.nan],
        "embedding": [np.ones(3), np.ones(2), np.zeros(0), None, np.ones(3)],  # ragged list column
    })


def assert_accounting(result) -> None:
    for s in result.steps:
        assert s.rows_in == s.rows_kept + s.rows_quarantined
    first, last = result.steps[0], result.steps[-1]
    assert first.rows_in == last.rows_kept + len(result.quarantine)


def test_retail_items_drop_missing_price_and_impute_sentinels():
    result = clean_table(retail_items(), "items.retail", CFG, source_file="retail/items.pq")
    assert result.clean["item_id"].tolist() == ["fmcg_1", "fmcg_2", "fmcg_3"]
    assert result.clean["brand_id"].tolist() == [10, -1, 11] and result.clean["brand_id"].dtype == np.int64
    assert result.clean["category"].tolist() == ["a", "b", "Unknown"]
    assert result.quarantine["item_id"].tolist() == ["fmcg_4", "fmcg_5"]
    assert set(result.quarantine[C.REASON]) == {"missing price"}
    assert set(result.quarantine[C.SOURCE_FILE]) == {"retail/items.pq"}
    steps = {s.name: s for s in result.steps}
    assert (steps["drop_missing_price"].rows_in, steps["drop_missing_price"].rows_quarantined) == (5, 2)
    assert steps["impute_str"].missing_after["category"] == 0 and steps["impute_int"].missing_after["brand_id"] == 0
    assert_accounting(result)


def test_marketplace_items_keep_missing_price_with_sentinel_and_flag():
    result = clean_table(retail_items(), "items.marketplace", CFG)
    assert len(result.clean) == 5 and len(result.quarantine) == 0
    assert result.clean["price"].tolist()[3:] == [0.0, 0.0]
    assert result.clean["price_missing"].tolist() == [False, False, False, True, True]


def test_brands_dedupe_on_key_keeps_first_despite_list_column():
    brands = pd.DataFrame({"brand_id": [7, 8, 7, 7], "embedding": [np.ones(2), None, np.zeros(5), np.zeros(0)]})
    result = clean_table(brands, "brands", CFG)
    assert result.clean["brand_id"].tolist() == [7, 8] and len(result.clean["embedding"][0]) == 2  # the first 7
    assert result.quarantine[C.REASON].tolist() == ["duplicate brand_id"] * 2
    assert_accounting(result)


def test_events_dedupe_on_key_subset_normalise_actions_and_subdomain_sentinel():
    events = pd.DataFrame({
        "timestamp": [1, 1, 2], "user_id": [5, 5, 5], "item_id": ["fmcg_1", "fmcg_1", "fmcg_2"],
        "subdomain": ["main", "search", None],  # the repeat differs outside the key: still a duplicate
        "action_type": ["added-to-cart", "added-to-cart", "view"], "os": ["ios", "ios", "ios"],
    })
    result = clean_table(events, "events.retail", CleaningConfig(subdomain_sentinel="unknown"))
    assert result.clean["action_type"].tolist() == ["added_to_cart", "view"]
    assert result.clean["subdomain"].tolist() == ["main", "unknown"]
    assert result.quarantine["subdomain"].tolist() == ["search"]
    default = clean_table(events, "events.retail", CFG)  # no sentinel configured: the null stays
    assert default.clean["subdomain"].isna().sum() == 1


def test_drop_unknown_items_needs_a_catalogue_and_quarantines_with_reason():
    events = pd.DataFrame({"timestamp": [1, 2], "user_id": [1, 1], "item_id": ["a", "b"], "subdomain": ["u2i"] * 2,
                           "action_type": ["view"] * 2, "os": ["ios"] * 2})
    cfg = CleaningConfig(drop_events_unknown_items=True)
    with pytest.raises(ValueError, match="events.marketplace"):
        clean_table(events, "events.marketplace", cfg)
    result = clean_table(events, "events.marketplace", cfg, known_items=pd.Index(["a"]))
    assert result.quarantine[C.REASON].tolist() == ["item not in catalogue"]


def test_users_keep_every_row():
    users = pd.DataFrame({"user_id": [1, 2, 3], "socdem_cluster": [1.0, np.nan, 3.0], "region": [np.nan, 2.0, 3.0]})
    result = clean_table(users, "users", CFG)
    assert len(result.clean) == 3 and result.clean["region"].tolist() == [-1, 2, 3]
    assert retention_by_table(result.steps).loc[0, "retention"] == 1.0


def test_configured_column_absent_is_an_error_naming_it():
    with pytest.raises(KeyError, match="region"):
        clean_table(pd.DataFrame({"user_id": [1], "socdem_cluster": [1]}), "users", CFG)


def test_step_invariant_is_asserted():
    with pytest.raises(AssertionError, match="brands/dedupe"):
        CleanStep("dedupe", "brands", 10, 8, 1, {})


def test_write_quarantine_round_trip(tmp_path):
    result = clean_table(retail_items(), "items.retail", CFG)
    path = write_quarantine(result, tmp_path)
    back = pq.read_table(path).to_pandas()
    assert back["item_id"].tolist() == ["fmcg_4", "fmcg_5"] and back[C.REASON].tolist() == ["missing price"] * 2
    assert not list(tmp_path.glob(".*.tmp"))
    counts = count_reasons([result])
    assert counts.to_dict("records") == [{"table": "items.retail", "reason": "missing price", "rows": 2}]


def test_the_suites_check_the_keys_and_sentinel_that_cleaning_uses():
    cleaning = CleaningConfig(dedupe_keys={"users": ("user_id", "region")}, int_sentinel=-7)
    params = SuiteParams.of(QualityConfig(), cleaning)
    assert params.unique_keys == {"users": ("user_id", "region")} and params.int_sentinel == -7
    assert params.code_ranges == QualityConfig().code_ranges  # the quality section passes through


# --------------------------------------------------------------------------- generated data
STUDY_RETENTION = {"items.retail": 0.894, "receipts": 0.986, "payments": 0.999998, "users": 1.0, "brands": 0.998}


def test_retention_on_generated_data_mirrors_the_study(tmp_path):
    from seqrec.synthetic.generate import generate_tecd
    from seqrec.data.reader import read_table_safe

    generate_tecd(tmp_path, GeneratorConfig(events=50_000, days=4, workers=1, retail_events_ratio=1.0, payments_ratio=0.2))
    frames = {"items.retail": read_table_safe(tmp_path / "retail/items.pq"), "users": read_table_safe(tmp_path / "users.pq"),
              "brands": read_table_safe(tmp_path / "brands.pq")}
    for table, folder in (("payments", "payments/events"), ("receipts", "payments/receipts")):
        frames[table] = pd.concat([read_table_safe(p) for p in sorted((tmp_path / folder).glob("*.pq"))], ignore_index=True)
    results = [clean_table(df, t, CFG) for t, df in frames.items()]
    retention = retention_by_table([s for r in results for s in r.steps]).set_index("table")["retention"]
    for table, study in STUDY_RETENTION.items():
        # brands: 1 duplicate in a few hundred rows is 0.3%; the others are exact counts of the documented rates
        assert retention[table] == pytest.approx(study, abs=0.005 if table == "brands" else 0.003), table
    for r in results:
        assert_accounting(r) if r.steps else None
        assert r.quarantine[C.REASON].notna().all()


def test_the_suites_take_each_tables_own_key_rule_and_refuse_spellings_cleaning_maps_away():
    cleaning = CleaningConfig(dedupe_keys={"items": ("item_id",), "items.retail": ("item_id", "brand_id")})
    params = SuiteParams.of(QualityConfig(), cleaning)
    assert params.keys_for("items.retail") == ("item_id", "brand_id")  # exact rule wins, as in cleaning
    assert params.keys_for("items.marketplace") == ("item_id",) and params.keys_for("reviews") is None
    assert "added-to-cart" in params.actions_for("retail", "raw")
    assert "added-to-cart" not in params.actions_for("retail", "cleaned") and "added_to_cart" in params.actions_for("retail", "cleaned")
    assert params.subdomain_sentinels == ()  # cleaning writes none by default, so the cleaned pass accepts none
    assert SuiteParams.of(QualityConfig(), CleaningConfig(subdomain_sentinel="unknown")).subdomain_sentinels == ("unknown",)


def test_table_totals_sum_over_partitions_and_retention_never_exceeds_one():
    # two day partitions of one table: 10 rows -> 8, then 20 rows -> 19 (dedupe then a price drop)
    day1 = [CleanStep("dedupe", "events.marketplace", 10, 9, 1, {}, "01082.parquet"),
            CleanStep("drop_missing_price", "events.marketplace", 9, 8, 1, {}, "01082.parquet")]
    day2 = [CleanStep("dedupe", "events.marketplace", 20, 20, 0, {}, "01083.parquet"),
            CleanStep("drop_missing_price", "events.marketplace", 20, 19, 1, {}, "01083.parquet")]
    row = retention_by_table(day1 + day2).set_index("table").loc["events.marketplace"]
    assert (row["rows_before"], row["rows_after"], row["quarantined"]) == (30, 27, 3)
    assert row["retention"] == pytest.approx(0.9)
    steps = steps_frame(day1 + day2).set_index("step")
    assert steps.loc["dedupe", "rows_in"] == 30 and steps.loc["drop_missing_price", "rows_kept"] == 27 and len(steps) == 2

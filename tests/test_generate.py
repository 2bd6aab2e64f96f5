"""Tests of the synthetic T-ECD generator: layout, exact schema, defect rates, determinism, structure."""

from __future__ import annotations

import collections
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from seqrec import columns as C
from seqrec.config import DefectRates, GeneratorConfig
from seqrec.synthetic.generate import TECD_SCHEMAS, generate_tecd, tecd_schema

REAL_EVENTS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tecd_marketplace" / "events"
DAYS = (1082, 1083, 1084)
# Big enough for every documented rate to be measured within 10% (brands need ~3000 rows).
RATES_CFG = GeneratorConfig(seed=7, events=60_000, days=3, workers=1, items_per_brand=1.0)
SMALL_CFG = GeneratorConfig(seed=3, events=6_000, days=2, workers=1, item_embedding_dim=8)


@pytest.fixture(scope="module")
def tecd(tmp_path_factory) -> tuple[Path, dict]:
    """A generated root at the scale used for the rate checks, with its summary."""
    root = tmp_path_factory.mktemp("tecd")
    calls = []
    summary = generate_tecd(root, RATES_CFG, progress=lambda *a: calls.append(a))
    return root, summary | {"progress_calls": calls}


def read_days(root: Path, table: str) -> pa.Table:
    """Return every day file of a partitioned table, concatenated in day order."""
    return pa.concat_tables(pq.read_table(root / table / f"{d:05d}.pq") for d in DAYS)


def null_share(table: pa.Table, column: str) -> float:
    """Return the share of nulls in a column."""
    return table[column].null_count / table.num_rows


def events_frame(root: Path, domain: str = "marketplace") -> pd.DataFrame:
    """Return a domain's events with int64 times and 30-minute session ids, by user and time."""
    df = read_days(root, f"{domain}/events").to_pandas()
    df["t"] = df[C.TIMESTAMP].astype("int64")
    df = df.sort_values([C.USER, "t"], kind="stable").reset_index(drop=True)
    same = df[C.USER].eq(df[C.USER].shift()) & (df["t"].diff() <= 30 * 60 * C.MICROS_PER_SECOND)
    return df.assign(session=(~same).cumsum())


def test_layout_is_exactly_tecd(tecd):
    root, _ = tecd
    files = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    expected = {"users.pq", "brands.pq", "_generator/item_groups.pq", "_generator/summary.json"}
    expected |= {f"{d}/items.pq" for d in RATES_CFG.domains}
    for day in DAYS:
        name = f"{day:05d}.pq"
        expected |= {f"{d}/events/{name}" for d in RATES_CFG.domains}
        expected |= {f"payments/events/{name}", f"payments/receipts/{name}", f"reviews/{name}"}
    assert files == expected


@pytest.mark.skipif(not REAL_EVENTS.exists(), reason=f"real T-ECD partitions absent at {REAL_EVENTS}")
def test_marketplace_schema_equals_real_files(tecd):
    root, _ = tecd
    real = pq.read_schema(REAL_EVENTS / "01272.pq")
    generated = pq.read_schema(root / "marketplace" / "events" / "01083.pq")
    assert generated.equals(real)  # names, order, types, nullability
    assert generated.equals(real, check_metadata=True)  # neither carries schema metadata
    assert TECD_SCHEMAS["events"].equals(real)


def test_every_table_has_its_declared_schema(tecd):
    root, _ = tecd
    checks = {"users": "users.pq", "brands": "brands.pq", "items": "retail/items.pq", "payments": "payments/events/01082.pq"}
    checks |= {"receipts": "payments/receipts/01083.pq", "reviews": "reviews/01084.pq", "events": "offers/events/01082.pq"}
    for table, rel in checks.items():
        assert pq.read_schema(root / rel).equals(tecd_schema(table)), rel
    with pytest.raises(KeyError, match="unknown T-ECD table 'orders'"):
        tecd_schema("orders")


def test_timestamps_fall_on_their_file_day_and_events_are_sorted(tecd):
    root, _ = tecd
    for table in ("marketplace/events", "retail/events", "offers/events", "payments/events", "payments/receipts", "reviews"):
        for day in DAYS:
            t = pq.read_table(root / table / f"{day:05d}.pq")[C.TIMESTAMP].cast(pa.int64()).to_numpy()
            assert len(t) > 0 and np.all(t // C.MICROS_PER_DAY == day), f"{table}/{day}"
            if table.endswith("events"):
                assert np.all(np.diff(t) >= 0), f"{table}/{day} is not sorted"


def test_marketplace_values_look_like_the_real_data(tecd):
    root, _ = tecd
    ev = read_days(root, "marketplace/events")
    actions = pd.Series(ev[C.ACTION].to_numpy(zero_copy_only=False)).value_counts(normalize=True)
    assert 0.96 < actions["view"] < 0.98 and set(actions.index) == {"view", "click", "clickout", "like"}
    assert set(pc.unique(ev[C.OS]).to_pylist()) == {"android", "ios", "other"}
    assert set(pc.unique(ev[C.SUBDOMAIN]).to_pylist()) == {"u2i", "i2i", "catalog", "search", "other", None}
    like = pc.equal(ev[C.ACTION], "like").to_numpy(zero_copy_only=False)
    assert np.array_equal(ev[C.SUBDOMAIN].is_null().to_numpy(zero_copy_only=False), like)  # null exactly on like
    assert all(re.fullmatch(r"nfmcg_\d+", s) for s in pc.unique(ev[C.ITEM]).to_pylist())
    retail = read_days(root, "retail/events")
    assert all(re.fullmatch(r"fmcg_\d+", s) for s in pc.unique(retail[C.ITEM]).to_pylist())
    orders = pc.equal(retail[C.ACTION], "order")
    assert set(pc.unique(retail[C.SUBDOMAIN].filter(orders)).to_pylist()) == {"other"}
    offers = read_days(root, "offers/events")
    assert offers[C.SUBDOMAIN].null_count == offers[C.OS].null_count == offers.num_rows


def test_defect_rates_match_tecd(tecd):
    root, summary = tecd
    d, items = DefectRates(), {dom: pq.read_table(root / dom / "items.pq") for dom in ("retail", "marketplace")}
    users, payments = pq.read_table(root / "users.pq"), read_days(root, "payments/events")
    receipts, brands = read_days(root, "payments/receipts"), pq.read_table(root / "brands.pq")
    market = read_days(root, "marketplace/events")
    item_ids = set(items["retail"][C.ITEM].to_pylist())
    measured = {  # (measured, documented, tiny -> absolute tolerance in percentage points)
        "retail category": (null_share(items["retail"], "category"), d.retail_items_missing_category, False),
        "retail price": (null_share(items["retail"], "price"), d.retail_items_missing_price, False),
        "market category": (null_share(items["marketplace"], "category"), d.marketplace_items_missing_category, False),
        "market subcategory": (null_share(items["marketplace"], "subcategory"), d.marketplace_items_missing_subcategory, False),
        "market price": (null_share(items["marketplace"], "price"), d.marketplace_items_missing_price, True),
        "payments price": (null_share(payments, "price"), d.payments_missing_price, True),
        "payments brand": (null_share(payments, "brand_id"), d.payments_missing_brand, False),
        "receipts price": (null_share(receipts, "price"), d.receipts_missing_price, False),
        "receipts brand": (null_share(receipts, "brand_id"), d.receipts_missing_brand, False),
        "brands duplicated": (1 - len(set(brands["brand_id"].to_pylist())) / brands.num_rows, d.brands_duplicated, False),
        "market subdomain": (null_share(market, C.SUBDOMAIN), d.marketplace_events_missing_subdomain, True),
        "users socdem": (null_share(users, "socdem_cluster"), d.users_missing_socdem, True),
        "users region": (null_share(users, "region"), d.users_missing_region, False),
        "receipt linkage": (np.mean([i in item_ids for i in receipts["approximate_item_id"].to_pylist()]), d.receipt_linkage, False),
    }
    for name, (got, want, tiny) in measured.items():
        tolerance = 0.0005 if tiny else 0.1 * want
        assert abs(got - want) <= tolerance, f"{name}: measured {got:.5%}, documented {want:.5%}"
    assert summary["defects"]["receipts_missing_price"] == receipts["price"].null_count  # summary counts what was written


def test_brands_repeat_one_id_several_times_and_embeddings_are_ragged(tecd):
    root, _ = tecd
    brands = pq.read_table(root / "brands.pq")
    assert max(collections.Counter(brands["brand_id"].to_pylist()).values()) == 7  # like brand 37799
    for table, dim in ((brands, RATES_CFG.brand_embedding_dim), (read_days(root, "reviews"), RATES_CFG.review_embedding_dim)):
        lengths = pc.list_value_length(table["embedding"]).drop_null().to_numpy()
        assert (lengths == 0).any() and (lengths == dim).any() and ((lengths > 0) & (lengths < dim)).any()
    assert null_share(brands, "embedding") > 0.5  # most brand embeddings are missing
    items = pq.read_table(root / "marketplace" / "items.pq")
    assert set(pc.list_value_length(items["embedding"]).to_pylist()) == {RATES_CFG.item_embedding_dim}
    ratings = read_days(root, "reviews")["rating"].to_numpy()
    assert set(np.unique(ratings)) == {1, 2, 3, 4, 5}


def test_no_defects_when_switched_off(tmp_path):
    cfg = SMALL_CFG.model_copy(update={"defects": DefectRates.none()})
    generate_tecd(tmp_path, cfg)
    tables = [pq.read_table(p) for p in tmp_path.rglob("*.pq") if "offers/events" not in str(p)]
    assert all(t[c].null_count == 0 for t in tables for c in t.column_names), "a null survived DefectRates.none()"
    brands = pq.read_table(tmp_path / "brands.pq")
    assert len(set(brands["brand_id"].to_pylist())) == brands.num_rows
    lengths = pc.list_value_length(brands["embedding"]).to_numpy()
    assert np.all(lengths == cfg.brand_embedding_dim)
    receipts = pq.read_table(tmp_path / "payments" / "receipts" / "01082.pq")
    retail_items = set(pq.read_table(tmp_path / "retail" / "items.pq")[C.ITEM].to_pylist())
    assert set(receipts["approximate_item_id"].to_pylist()) <= retail_items  # linkage 100%


def file_bytes(root: Path) -> dict[str, bytes]:
    """Return every file under root by relative path."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_in_any_number_of_workers(tmp_path):
    generate_tecd(tmp_path / "a", SMALL_CFG)
    generate_tecd(tmp_path / "b", SMALL_CFG.model_copy(update={"workers": 2}))
    generate_tecd(tmp_path / "c", SMALL_CFG.model_copy(update={"seed": 4}))
    a, b, c = file_bytes(tmp_path / "a"), file_bytes(tmp_path / "b"), file_bytes(tmp_path / "c")
    summary = "_generator/summary.json"
    assert {k: v for k, v in a.items() if k != summary} == {k: v for k, v in b.items() if k != summary}
    assert a[summary].replace(b'"workers": 1', b'"workers": 2') == b[summary]  # no timings in it
    assert a.keys() == c.keys() and all(a[k] != c[k] for k in a if k.endswith(".pq"))


def test_a_day_file_depends_only_on_seed_and_day(tmp_path):
    generate_tecd(tmp_path / "a", SMALL_CFG)  # days 1082, 1083
    generate_tecd(tmp_path / "b", SMALL_CFG.model_copy(update={"first_day": 1083}))  # days 1083, 1084
    rel = "marketplace/events/01083.pq"
    assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()


def test_sessions_cross_midnight(tecd):
    root, summary = tecd
    df = events_frame(root)
    days = df.groupby("session")["t"].agg(["min", "max"]) // C.MICROS_PER_DAY
    assert (days["max"] > days["min"]).sum() > 0
    assert summary["events_after_midnight"]["marketplace"] > 0


def test_sessions_are_separated_by_gaps_and_users_recur(tecd):
    root, _ = tecd
    df = events_frame(root)
    gaps = df.groupby("session")["t"].diff().dropna() / C.MICROS_PER_SECOND
    assert gaps.median() < 300 and gaps.max() <= 30 * 60
    days = df.groupby(C.USER)["t"].agg(lambda t: len(np.unique(t // C.MICROS_PER_DAY)))
    assert (days > 1).mean() > 0.2  # users come back on other days
    counts = df[C.ITEM].value_counts().to_numpy()
    assert counts[: max(1, len(counts) // 100)].sum() / counts.sum() > 0.15  # Zipf: top 1% of items


def test_next_items_follow_the_latent_intent_and_history_beats_markov(tecd):
    root, _ = tecd
    df = events_frame(root)
    groups = pq.read_table(root / "_generator" / "item_groups.pq").to_pandas()
    groups = groups[groups[C.DOMAIN] == "marketplace"].groupby(C.ITEM)["group"].apply(frozenset).to_dict()
    items, session = df[C.ITEM].to_numpy(), df["session"].to_numpy()
    pairs = [(a, b) for a, b, s, t in zip(items[:-1], items[1:], session[:-1], session[1:]) if s == t and a != b]
    same = np.mean([bool(groups[a] & groups[b]) for a, b in pairs])
    chance = 1 - (1 - 2 / RATES_CFG.intents) ** 2  # two random items share one of their two intents
    assert same > 0.8 and chance < 0.1
    hit_markov, hit_history = markov_vs_history(df)
    assert hit_history > hit_markov + 0.03, (hit_markov, hit_history)


def markov_vs_history(df: pd.DataFrame, k: int = 10) -> tuple[float, float]:
    """Return HR@k on the last day of a first-order Markov chain and of transitions from the whole history."""
    last = df["t"].max() // C.MICROS_PER_DAY
    test = df.groupby("session")["t"].transform("min") // C.MICROS_PER_DAY == last
    following = collections.defaultdict(collections.Counter)
    for seq in df[~test].groupby("session")[C.ITEM].agg(list):
        for a, b in zip(seq[:-1], seq[1:]):
            following[a][b] += 1
    hits, n = np.zeros(2), 0
    for seq in df[test].groupby("session")[C.ITEM].agg(list):
        for i in range(1, len(seq)):
            history = collections.Counter()
            for dist, prev in enumerate(reversed(seq[:i])):
                total = sum(following[prev].values()) or 1
                for item, c in following[prev].most_common(k):
                    history[item] += 0.6**dist * c / total
            markov = [item for item, _ in following[seq[i - 1]].most_common(k)]
            hits += [seq[i] in markov, seq[i] in dict(history.most_common(k))]
            n += 1
    return tuple(hits / n)


def test_summary_and_progress(tecd):
    root, summary = tecd
    assert summary["rows"]["marketplace/events"] == read_days(root, "marketplace/events").num_rows
    assert abs(summary["rows"]["marketplace/events"] - RATES_CFG.events) < 0.05 * RATES_CFG.events
    assert summary["events_per_second"] > 0 and (root / "_generator" / "summary.json").is_file()
    assert summary["progress_calls"][-1] == ("days", 3, 3)


def test_config_rejects_impossible_step_mix():
    with pytest.raises(ValueError, match="exceeds 1"):
        GeneratorConfig(p_successor=0.6, p_repeat=0.3, p_revisit=0.2)

"""Co-occurrence graph: known edges and weights on tiny sessions and baskets."""

from __future__ import annotations

import itertools
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp

from seqrec import columns as C
from seqrec.config import GraphConfig
from seqrec.features.cooccurrence import RECEIPT_ITEM, TRANSACTION, SessionOrderError, check_runs
from seqrec.features.graph import build_cooccurrence_graph, graph_stats, load_item_graph, plot_degree_distribution


def sessions_of(*lists: str) -> pd.DataFrame:
    """Return a session table: session i holds the characters of lists[i], in time order."""
    rows = [(s, t, item) for s, items in enumerate(lists) for t, item in enumerate(items)]
    return pd.DataFrame(rows, columns=[C.SESSION, C.TIMESTAMP, C.ITEM])


def baskets_of(**baskets: str) -> pd.DataFrame:
    """Return receipt lines: transaction name -> its items (one character per line)."""
    rows = [(tx, item) for tx, items in baskets.items() for item in items]
    return pd.DataFrame(rows, columns=[TRANSACTION, RECEIPT_ITEM])


def edge_dict(graph, column: str = "weight") -> dict[tuple[str, str], float]:
    """Return {(item_a, item_b): value} of a graph's edges."""
    return {(a, b): v for a, b, v in graph.edges[["item_a", "item_b", column]].itertuples(index=False)}


@pytest.mark.parametrize(
    "cfg, expected",
    [
        # a b c a: adjacent pairs only
        (GraphConfig(coview="window", window=1), {("a", "b"): 1, ("b", "c"): 1, ("a", "c"): 1}),
        # all pairs: d=1 ab bc ca, d=2 ac ba, d=3 aa (self, skipped)
        (GraphConfig(coview="all"), {("a", "b"): 2, ("a", "c"): 2, ("b", "c"): 1}),
        # 1/distance: ab = 1 + 1/2, ac = 1 + 1/2, bc = 1
        (GraphConfig(coview="all", distance_weighting=True), {("a", "b"): 1.5, ("a", "c"): 1.5, ("b", "c"): 1}),
        (GraphConfig(coview="window", window=2, distance_weighting=True), {("a", "b"): 1.5, ("a", "c"): 1.5, ("b", "c"): 1}),
    ],
)
def test_coview_window_all_and_distance(cfg: GraphConfig, expected: dict, tmp_path: Path) -> None:
    graph = build_cooccurrence_graph(sessions_of("abca"), None, None, cfg, tmp_path)
    assert edge_dict(graph) == pytest.approx(expected)
    assert graph.report["coview_self_pairs_skipped"] == (1 if cfg.coview == "all" else 0)


def test_copurchase_linkage_noise_and_merge(tmp_path: Path) -> None:
    receipts = baskets_of(t1="abx", t2="ab", t3="abcde", t4="cc")  # x is not in the catalogue
    cfg = GraphConfig(window=1, max_basket=4, copurchase_weight=0.5)
    graph = build_cooccurrence_graph(sessions_of("ab", "ba"), receipts, pd.Series(list("abcd")), cfg, tmp_path)
    # co-view ab = 2 (two sessions); baskets t1 and t2 add ab twice; t3 (5 items) is noise; t4 has one item
    assert edge_dict(graph, "coview") == {("a", "b"): 2.0}
    assert edge_dict(graph, "copurchase") == {("a", "b"): 2}
    assert edge_dict(graph) == {("a", "b"): 2 + 0.5 * 2}
    assert edge_dict(graph, "count") == {("a", "b"): 4}
    assert graph.report["baskets_dropped_too_large"] == 1
    assert graph.report["receipt_lines_unused"] == {"basket_too_large": 5, "unlinked_item": 1, "duplicate_in_basket": 1}
    unused = pd.read_parquet(tmp_path / "unused_receipt_lines.pq")
    assert len(unused) == 7 and unused.loc[unused[C.REASON] == "unlinked_item", RECEIPT_ITEM].tolist() == ["x"]
    assert "x" not in set(graph.vocab.ids) and "c" in set(graph.vocab.ids)  # c linked (t4) but without edges
    assert graph_stats(graph)["catalogue_coverage"] == pytest.approx(2 / 4)


def test_min_count_prunes_and_keeps_pruned_edges(tmp_path: Path) -> None:
    cfg = GraphConfig(window=1, min_count=2, buckets=3)
    graph = build_cooccurrence_graph(sessions_of("ab", "ab", "cd", "ce"), None, None, cfg, tmp_path)
    assert edge_dict(graph) == {("a", "b"): 2.0}
    assert graph.report["edges_pruned_min_count"] == 2
    pruned = pd.read_parquet(tmp_path / "pruned_edges")
    assert sorted(zip(pruned["item_a"], pruned["item_b"])) == [("c", "d"), ("c", "e")]
    assert set(pruned[C.REASON]) == {"min_count"}


def reference_edges(sessions: pd.DataFrame, window: int, distance: bool) -> dict[tuple[str, str], float]:
    """Return co-view weights by a direct loop over every session (the definition, not the code)."""
    out: dict[tuple[str, str], float] = defaultdict(float)
    for _, sess in sessions.sort_values([C.SESSION, C.TIMESTAMP], kind="stable").groupby(C.SESSION):
        items = sess[C.ITEM].tolist()
        for i, j in itertools.combinations(range(len(items)), 2):
            if j - i <= window and items[i] != items[j]:
                out[tuple(sorted((items[i], items[j])))] += 1 / (j - i) if distance else 1
    return dict(out)


@pytest.mark.parametrize("window, distance", [(3, False), (50, True)])
def test_bucketed_chunked_aggregation_equals_in_memory(window: int, distance: bool, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 12, 150)
    sessions = pd.DataFrame({
        C.SESSION: np.repeat(rng.permutation(150), lengths),  # session ids not in time order
        C.TIMESTAMP: rng.integers(0, 1000, lengths.sum()),
        C.ITEM: [f"i{v:02d}" for v in rng.integers(0, 40, lengths.sum())],
    })
    base = dict(coview="window", window=window, distance_weighting=distance)
    one = build_cooccurrence_graph(sessions, None, None, GraphConfig(**base, buckets=1), tmp_path / "one")
    many = build_cooccurrence_graph(sessions, None, None, GraphConfig(**base, buckets=7, chunk_events=40), tmp_path / "many")
    assert many.report["coview_chunks"] > 15 and len(list((tmp_path / "many").glob("_pairs"))) == 0
    pd.testing.assert_frame_equal(one.edges, many.edges)
    assert edge_dict(many) == pytest.approx(reference_edges(sessions, window, distance))
    unused = pd.CategoricalDtype(["zz", *sorted(sessions[C.ITEM].unique()), "a0"])  # categories no event uses
    as_category = build_cooccurrence_graph(sessions.astype({C.ITEM: unused}), None, None,
                                           GraphConfig(**base, buckets=7, chunk_events=40), tmp_path / "cat")
    pd.testing.assert_frame_equal(as_category.edges, many.edges)  # categorical items (as the stage reads them): same graph
    assert list(as_category.vocab.ids) == list(many.vocab.ids)


def test_matrix_files_and_rerun(tmp_path: Path) -> None:
    cfg = GraphConfig(window=1)
    build_cooccurrence_graph(sessions_of("abc"), None, None, cfg, tmp_path)
    graph = build_cooccurrence_graph(sessions_of("abc", "cb"), None, None, cfg, tmp_path)  # same workdir again
    a, b, c = graph.vocab.encode(np.array(["a", "b", "c"]))
    m = graph.matrix.toarray()
    assert m[a, b] == m[b, a] == 1 and m[b, c] == m[c, b] == 2 and m[a, c] == 0  # no stale pairs counted
    assert m[0].sum() == 0 and (m == m.T).all()
    loaded = load_item_graph(tmp_path)
    pd.testing.assert_frame_equal(loaded.edges, graph.edges)
    assert (loaded.matrix != graph.matrix).nnz == 0 and list(loaded.vocab.ids) == list(graph.vocab.ids)
    assert (sp.load_npz(tmp_path / "graph.npz") != graph.matrix).nnz == 0


def test_graph_stats_and_degree_plot(tmp_path: Path) -> None:
    # star around a (degree 3), plus b-c; isolated z (only in a one-item session)
    graph = build_cooccurrence_graph(sessions_of("ab", "ac", "ad", "bc", "z"), None, None, GraphConfig(window=1), tmp_path)
    stats = graph_stats(graph)
    assert (stats["nodes"], stats["isolated_items"], stats["edges"], stats["degree_max"]) == (4, 1, 4, 3)
    assert stats["degree_p50"] == 2.0 and stats["degree_mean"] == pytest.approx(8 / 4)
    png = plot_degree_distribution(graph, tmp_path / "degree.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_columns_are_named(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="session_id"):
        build_cooccurrence_graph(sessions_of("ab").drop(columns=C.SESSION), None, None, GraphConfig(), tmp_path)
    with pytest.raises(KeyError, match="transaction_hash"):
        build_cooccurrence_graph(sessions_of("ab"), pd.DataFrame({RECEIPT_ITEM: ["a"]}), None, GraphConfig(), tmp_path)


def random_user_sessions(seed: int = 1) -> pd.DataFrame:
    """Return sessions laid out as the sessionize stage writes them: grouped by user, then time.

    Session ids are not in file order (they number sessions by start time), and some
    sessions hold ties in time (kept in input order).
    """
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 15, 200)
    ids = rng.permutation(200)
    times = np.concatenate([np.sort(rng.integers(0, 6, n)) for n in lengths])
    return pd.DataFrame({
        C.SESSION: np.repeat(ids, lengths), C.TIMESTAMP: times,
        C.ITEM: [f"i{v:02d}" for v in rng.integers(0, 30, lengths.sum())],
    })


@pytest.mark.parametrize("window, distance", [(3, False), (50, True)])
def test_streamed_sessions_file_equals_in_memory(window: int, distance: bool, tmp_path: Path) -> None:
    sessions = random_user_sessions()
    path = tmp_path / "sessions.parquet"
    sessions.to_parquet(path, row_group_size=97)  # row groups and batches cut through sessions
    cfg = GraphConfig(window=window, distance_weighting=distance, buckets=5, chunk_events=41)
    streamed = build_cooccurrence_graph(path, None, None, cfg, tmp_path / "streamed")
    in_memory = build_cooccurrence_graph(sessions, None, None, cfg, tmp_path / "memory")
    assert streamed.report["session_events"] == len(sessions) and streamed.report["coview_chunks"] > 20
    pd.testing.assert_frame_equal(streamed.edges, in_memory.edges)
    assert abs(streamed.matrix - in_memory.matrix).max() < 1e-12
    assert edge_dict(streamed) == pytest.approx(reference_edges(sessions, window, distance))
    assert streamed.matrix.indices.dtype == np.int32 and streamed.matrix.has_sorted_indices
    assert pq.ParquetFile(tmp_path / "streamed" / "edges.pq").metadata.num_rows == streamed.report["edges"]


def test_sessions_file_not_grouped_by_session_is_read_whole(tmp_path: Path, caplog) -> None:
    sessions = random_user_sessions()
    shuffled = sessions.sample(frac=1.0, random_state=3).reset_index(drop=True)  # sessions split in many runs
    shuffled.to_parquet(tmp_path / "shuffled.parquet", row_group_size=50)
    cfg = GraphConfig(window=4, buckets=3, chunk_events=60)
    with caplog.at_level("WARNING", logger="seqrec.features.graph"):
        graph = build_cooccurrence_graph(tmp_path / "shuffled.parquet", None, None, cfg, tmp_path / "g")
    assert "split in two or more runs" in caplog.text and "reading the sessions whole" in caplog.text
    assert graph.report["session_events"] == len(sessions)  # counted once: the streamed attempt was discarded
    assert edge_dict(graph) == pytest.approx(reference_edges(shuffled, 4, False))  # time ties: the file's order


def test_check_runs_names_what_breaks_streaming() -> None:
    seen = check_runs(np.array([4, 4, 2, 2]), np.array([1, 2, 0, 5]), np.zeros(0, bool), Path("s.pq"))
    assert np.flatnonzero(seen).tolist() == [2, 4]
    with pytest.raises(SessionOrderError, match="s.pq: the rows of session 7 are not in time order"):
        check_runs(np.array([7, 7]), np.array([5, 4]), seen, Path("s.pq"))
    with pytest.raises(SessionOrderError, match="split in two or more runs"):
        check_runs(np.array([1, 4]), np.array([0, 0]), seen, Path("s.pq"))  # 4 was met in an earlier chunk
    with pytest.raises(SessionOrderError, match="split in two or more runs"):
        check_runs(np.array([1, 3, 1]), np.array([0, 0, 0]), seen, Path("s.pq"))
    with pytest.raises(SessionOrderError, match="outside"):
        check_runs(np.array([-1]), np.array([0]), seen, Path("s.pq"))


def streamed_equals_in_memory(path: Path, sessions: pd.DataFrame, cfg: GraphConfig, work: Path) -> None:
    """Assert that the graph of a sessions file equals the in-memory graph of the frame."""
    streamed = build_cooccurrence_graph(path, None, None, cfg, work / "streamed")
    in_memory = build_cooccurrence_graph(sessions, None, None, cfg, work / "memory")
    assert streamed.report["session_events"] == len(sessions)
    pd.testing.assert_frame_equal(streamed.edges, in_memory.edges)
    assert abs(streamed.matrix - in_memory.matrix).max() < 1e-12


def test_stream_carries_a_long_session_across_batches_and_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    head, tail = random_user_sessions(2), random_user_sessions(3)
    long = pd.DataFrame({C.SESSION: 999, C.TIMESTAMP: np.arange(300),  # longer than a batch and a row group
                         C.ITEM: [f"i{v:02d}" for v in rng.integers(0, 30, 300)]})
    sessions = pd.concat([head, long, tail.assign(**{C.SESSION: tail[C.SESSION] + 1000})], ignore_index=True)
    folder = tmp_path / "sessions"
    folder.mkdir()
    cut = len(head) + 150  # the long session goes on in the second file
    sessions.iloc[:cut].to_parquet(folder / "part-0.parquet", row_group_size=64)
    sessions.iloc[:0].to_parquet(folder / "part-1.parquet")  # an empty file between them
    sessions.iloc[cut:].to_parquet(folder / "part-2.parquet", row_group_size=64)
    pd.DataFrame({"x": [1]}).to_parquet(folder / "_metadata_like.parquet")  # skipped, as pyarrow skips it
    cfg = GraphConfig(window=6, distance_weighting=True, buckets=4, chunk_events=50)
    streamed_equals_in_memory(folder, sessions, cfg, tmp_path)
    assert edge_dict(build_cooccurrence_graph(folder, None, None, cfg, tmp_path / "again")) == pytest.approx(
        reference_edges(sessions, 6, True))


def test_fault_in_the_last_rows_falls_back_after_spilling(tmp_path: Path, caplog) -> None:
    sessions = random_user_sessions(4)
    early = sessions[C.SESSION].iloc[0]
    late = pd.DataFrame({C.SESSION: [early], C.TIMESTAMP: [99], C.ITEM: ["i07"]})  # a row of the first session, at the end
    faulty = pd.concat([sessions, late], ignore_index=True)
    faulty.to_parquet(tmp_path / "faulty.parquet", row_group_size=80)
    cfg = GraphConfig(window=3, buckets=3, chunk_events=40)
    with caplog.at_level("WARNING", logger="seqrec.features.graph"):
        streamed_equals_in_memory(tmp_path / "faulty.parquet", faulty, cfg, tmp_path)  # pairs spilled before are discarded
    assert "split in two or more runs" in caplog.text


def test_stream_reads_zoned_timestamps_and_rejects_nulls(tmp_path: Path) -> None:
    sessions = random_user_sessions(6)
    zoned = sessions.assign(**{C.TIMESTAMP: pd.to_datetime(sessions[C.TIMESTAMP], unit="s", utc=True)})
    zoned.to_parquet(tmp_path / "zoned.parquet", row_group_size=70)
    streamed_equals_in_memory(tmp_path / "zoned.parquet", zoned, GraphConfig(window=2, chunk_events=33), tmp_path)
    with_null = zoned.astype({C.TIMESTAMP: "datetime64[us, UTC]"})
    with_null.loc[5, C.TIMESTAMP] = pd.NaT
    with_null.to_parquet(tmp_path / "null.parquet")
    with pytest.raises(ValueError, match=f"null.parquet: column '{C.TIMESTAMP}' has 1 null"):
        build_cooccurrence_graph(tmp_path / "null.parquet", None, None, GraphConfig(), tmp_path / "n1")
    with pytest.raises(ValueError, match=f"column '{C.TIMESTAMP}' has 1 null"):
        build_cooccurrence_graph(with_null, None, None, GraphConfig(), tmp_path / "n2")

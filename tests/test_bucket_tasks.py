"""Sessions and the item graph cut into tasks (days, user buckets, session parts, pair buckets): the same files
whether the tasks run one after another here or on the worker processes of a real Dask cluster on 127.0.0.1."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from distributed import Client, LocalCluster, get_task_stream

from seqrec import columns as C
from seqrec import io
from seqrec.config import GraphConfig, SessionConfig
from seqrec.features.cooccurrence import iter_file_chunks, spill_sessions
from seqrec.features.graph import build_cooccurrence_graph, load_item_graph
from seqrec.features.sessions_stream import PARTS_MANIFEST, sessionize_files
from seqrec.parallel import DaskMapper, serial_map, task_name
from seqrec.sequences import ItemVocab
from test_sessions import random_days


@pytest.fixture(scope="module")
def cluster():
    """A scheduler and two single-threaded worker processes on 127.0.0.1."""
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", protocol="tcp",
                      dashboard_address=None, memory_limit=0) as local:
        yield local


def day_files(tmp_path: Path, seed: int = 7) -> list[Path]:
    return [io.write_table(p, tmp_path / "days" / f"{i:05d}.parquet") for i, p in enumerate(random_days(seed, days=5))]


def tasks_by_worker(stream: list[dict]) -> dict[str, set[str]]:
    """Return {task name: the workers that ran tasks of it} from a scheduler task stream."""
    seen: dict[str, set[str]] = defaultdict(set)
    for t in stream:
        seen[str(t["key"]).rsplit("-", 2)[0]].add(t["worker"])
    return seen


def test_sessions_on_dask_workers_equal_the_serial_run(cluster, tmp_path: Path) -> None:
    """Days (passes 1 and 3a) and user buckets (3b) as Dask tasks on both workers: same parts, rows, ids and counts."""
    paths = day_files(tmp_path)
    cfg = SessionConfig(min_item_support=3, min_session_length=2, gap_minutes=20)
    here = sessionize_files(paths, cfg, tmp_path / "serial", bucket_events=2000)
    with Client(cluster.scheduler_address) as client, get_task_stream(client=client) as stream:
        there = sessionize_files(paths, cfg, tmp_path / "dask", bucket_events=2000, mapper=DaskMapper(cluster.scheduler_address))
    ran = tasks_by_worker(stream.data)
    assert {"index-day", "spill-day", "finish-bucket"} <= set(ran)
    assert all(len(ran[name]) == 2 for name in ("index-day", "spill-day", "finish-bucket"))  # both workers worked
    assert there["report"] == here["report"] and here["report"]["buckets"] >= 5
    assert here["report"]["events_removed"] > 0 and here["report"]["sessions_stitched_across_partitions"] > 0
    for key in ("sessions", "removed"):
        a, b = sorted(Path(here[key]).glob("part-*.parquet")), sorted(Path(there[key]).glob("part-*.parquet"))
        assert [p.name for p in a] == [p.name for p in b] and len(a) == here["report"]["buckets"]
        for x, y in zip(a, b):
            assert pq.read_table(x).equals(pq.read_table(y))
    manifest = io.read_json(Path(there["sessions"]) / PARTS_MANIFEST)
    assert manifest["whole_sessions"] and sum(manifest["rows"]) == here["report"]["events_out"]
    assert not (tmp_path / "dask" / "_work").exists()  # the spill folders are gone


def test_each_part_holds_whole_users_and_sessions(tmp_path: Path) -> None:
    """No user (so no session) spans two parts, and the folder reads as one table sorted by user then time."""
    out = sessionize_files(day_files(tmp_path, seed=3), SessionConfig(), tmp_path / "out", bucket_events=1500)
    parts = [pq.read_table(p).to_pandas() for p in sorted(Path(out["sessions"]).glob("part-*.parquet"))]
    users = [set(p[C.USER]) for p in parts]
    assert len(parts) >= 5 and all(not (users[i] & users[j]) for i in range(len(users)) for j in range(i))
    assert all(p[C.USER].is_monotonic_increasing for p in parts)
    assert [max(u) for u in users if u] == sorted(max(u) for u in users if u)
    whole = pd.read_parquet(out["sessions"])
    assert len(whole) == out["report"]["events_out"] == sum(len(p) for p in parts)
    assert whole.groupby(C.SESSION)[C.USER].nunique().max() == 1


@pytest.mark.parametrize("window, distance, min_count", [(3, True, 1), (10_000, False, 2)])
def test_graph_on_dask_workers_equals_the_serial_and_single_file_graphs(cluster, tmp_path: Path, window: int,
                                                                        distance: bool, min_count: int) -> None:
    """Session parts and pair buckets as Dask tasks: the same edges, pruned edges, matrix and counts as the serial
    run, and the same edges as the graph of the sessions written as one file (streamed as one)."""
    out = sessionize_files(day_files(tmp_path), SessionConfig(), tmp_path / "sessions", bucket_events=2000)
    cfg = GraphConfig(window=window, distance_weighting=distance, min_count=min_count, buckets=8, chunk_events=700)
    serial = build_cooccurrence_graph(out["sessions"], None, None, cfg, tmp_path / "serial")
    with Client(cluster.scheduler_address) as client, get_task_stream(client=client) as stream:
        dask = build_cooccurrence_graph(out["sessions"], None, None, cfg, tmp_path / "dask",
                                        mapper=DaskMapper(cluster.scheduler_address))
    ran = tasks_by_worker(stream.data)
    assert len(ran["spill-part"]) == 2 and len(ran["aggregate-bucket"]) == 2
    assert dask.report == serial.report and serial.report["coview_chunks"] > serial.report["session_events"] // 700
    pd.testing.assert_frame_equal(dask.edges, serial.edges)
    assert (dask.matrix != serial.matrix).nnz == 0
    pruned = [pd.read_parquet(tmp_path / w / "pruned_edges") for w in ("serial", "dask")] if min_count > 1 else None
    if pruned:
        assert len(pruned[0]) == serial.report["edges_pruned_min_count"] > 0
        key = ["item_a", "item_b"]
        pd.testing.assert_frame_equal(*(p.sort_values(key, ignore_index=True) for p in pruned))
    one = io.write_table(pd.read_parquet(out["sessions"]), tmp_path / "one.parquet")  # no manifest: one stream
    single = build_cooccurrence_graph(one, None, None, cfg, tmp_path / "single")
    pd.testing.assert_frame_equal(single.edges, serial.edges, check_exact=False, rtol=1e-12)
    assert load_item_graph(tmp_path / "dask").report == dask.report


def test_a_part_that_is_not_grouped_by_session_falls_back_to_reading_whole(tmp_path: Path, caplog) -> None:
    """A folder whose manifest promises whole sessions but whose part breaks the order: read whole, same pairs."""
    out = sessionize_files(day_files(tmp_path), SessionConfig(), tmp_path / "sessions", bucket_events=2000)
    first = sorted(Path(out["sessions"]).glob("part-*.parquet"))[0]
    io.write_table(pd.read_parquet(first).iloc[::-1], first)  # time order broken inside one part
    vocab = ItemVocab.from_items(pd.read_parquet(out["sessions"])[C.ITEM])
    cfg = GraphConfig(buckets=4)
    counts = spill_sessions(Path(out["sessions"]), vocab, cfg, tmp_path / "pairs")
    assert "reading the sessions whole" in caplog.text
    assert counts["session_events"] == out["report"]["events_out"]


def test_dask_mapper_keeps_order_and_raises_the_tasks_error(cluster, tmp_path: Path) -> None:
    """Results come back in item order; a task's exception is raised here with its type and message."""
    mapper = DaskMapper(cluster.scheduler_address)
    assert mapper(abs, [-3, 2, -1]) == [3, 2, 1] == serial_map(abs, [-3, 2, -1])
    assert mapper(abs, []) == [] and task_name(iter_file_chunks) == "iter-file-chunks"
    bad = random_days(1, days=1)[0].astype({C.USER: float})
    path = io.write_table(bad, tmp_path / "days" / "00000.parquet")
    with pytest.raises(TypeError, match="00000.parquet: column 'user_id' must be int64"):
        sessionize_files([path], SessionConfig(), tmp_path / "out", mapper=mapper)


def test_atomic_dir_replaces_a_file_or_folder_and_leaves_nothing_on_failure(tmp_path: Path) -> None:
    dest = tmp_path / "sessions.parquet"
    dest.write_text("an older single file")
    with io.atomic_dir(dest) as tmp:
        (tmp / "part-00000.parquet").write_text("new")
    assert dest.is_dir() and [p.name for p in dest.iterdir()] == ["part-00000.parquet"]
    with pytest.raises(RuntimeError), io.atomic_dir(dest) as tmp:
        (tmp / "part-00001.parquet").write_text("half")
        raise RuntimeError("a task failed")
    assert [p.name for p in dest.iterdir()] == ["part-00000.parquet"]  # the old output stays whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sessions.parquet"]  # no temporary folder left
    with io.atomic_dir(dest) as tmp:
        (tmp / "part-00009.parquet").write_text("newer")
    assert [p.name for p in dest.iterdir()] == ["part-00009.parquet"] and np.all(sorted(tmp_path.iterdir()) == [dest])

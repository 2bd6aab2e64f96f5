"""Cleaning per TECD.md's policy, with full row accounting.

Every step returns the frame it keeps and the rows it drops; ``clean_table`` records a
``CleanStep`` for each (rows in = kept + quarantined, asserted) and collects dropped rows in a
quarantine frame carrying a ``reason`` (and ``source_file`` when known). Rules are keyed by
table in ``CleaningConfig``: an exact key (``items.retail``) wins over the family (``items``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np
import pandas as pd

from seqrec import columns as C
from seqrec import io
from seqrec.config import CleaningConfig

T = TypeVar("T")


@dataclass(frozen=True)
class CleanStep:
    """Row accounting of one cleaning step on one table."""

    name: str
    table: str
    rows_in: int
    rows_kept: int
    rows_quarantined: int
    missing_after: dict[str, int]
    partition: str | None = None  # the source file of a partitioned table (events: one per day)

    def __post_init__(self) -> None:
        assert self.rows_in == self.rows_kept + self.rows_quarantined, (
            f"{self.table}/{self.name}: rows_in {self.rows_in} != kept {self.rows_kept} + quarantined {self.rows_quarantined}"
        )


@dataclass
class CleanResult:
    """A cleaned table, the rows it lost (with reasons) and the steps that produced it."""

    table: str
    clean: pd.DataFrame
    quarantine: pd.DataFrame
    steps: list[CleanStep] = field(default_factory=list)


def rule_for(rules: dict[str, T] | tuple[str, ...], table: str) -> T | bool | None:
    """Return the rule for ``table`` (exact key, else family key); for a tuple of tables, membership."""
    family = table.split(".")[0]
    if isinstance(rules, tuple):
        return table in rules or family in rules
    return rules.get(table, rules.get(family))


def count_missing(df: pd.DataFrame) -> dict[str, int]:
    """Return the number of missing values per column."""
    return {str(c): int(n) for c, n in df.isna().sum().items()}


def require_columns(df: pd.DataFrame, table: str, step: str, names: tuple[str, ...] | list[str]) -> None:
    """Raise KeyError naming the table, step and column when a configured column is absent."""
    missing = [n for n in names if n not in df]
    if missing:
        raise KeyError(f"{table}: cleaning step '{step}' needs column(s) {missing}, table has {list(df.columns)}")


def dedupe_rows(df: pd.DataFrame, table: str, cfg: CleaningConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (first row of each key, later repeats with reason): keys are a subset, never list columns."""
    keys = list(rule_for(cfg.dedupe_keys, table))
    require_columns(df, table, "dedupe", keys)
    repeat = df.duplicated(subset=keys, keep="first").to_numpy()
    return df[~repeat], df[repeat].assign(**{C.REASON: f"duplicate {'+'.join(keys)}"})


def drop_missing_price(df: pd.DataFrame, table: str, cfg: CleaningConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (rows with a price, rows without one with reason)."""
    require_columns(df, table, "drop_missing_price", ["price"])
    missing = df["price"].isna().to_numpy()
    return df[~missing], df[missing].assign(**{C.REASON: "missing price"})


def fill_int(series: pd.Series, sentinel: int) -> pd.Series:
    """Return the series with nulls set to ``sentinel``, as int64 when every value is integral."""
    filled = series.fillna(sentinel)
    if filled.dtype.kind == "f" and np.all(np.mod(filled.to_numpy(), 1) == 0):
        return filled.astype("int64")
    return filled.astype("int64") if str(filled.dtype) == "Int64" else filled


def impute_ints(df: pd.DataFrame, table: str, cfg: CleaningConfig) -> tuple[pd.DataFrame, None]:
    """Return the frame with the table's integer code columns' nulls set to the integer sentinel."""
    names = rule_for(cfg.impute_int, table) or ()
    require_columns(df, table, "impute_int", names)
    return df.assign(**{n: fill_int(df[n], cfg.int_sentinel) for n in names}), None


def impute_strs(df: pd.DataFrame, table: str, cfg: CleaningConfig) -> tuple[pd.DataFrame, None]:
    """Return the frame with the table's text columns' nulls set to the string sentinel."""
    names = rule_for(cfg.impute_str, table) or ()
    require_columns(df, table, "impute_str", names)
    return df.assign(**{n: df[n].fillna(cfg.str_sentinel) for n in names}), None


def impute_price(df: pd.DataFrame, table: str, cfg: CleaningConfig) -> tuple[pd.DataFrame, None]:
    """Return the frame with missing prices set to the sentinel and a boolean flag column marking them."""
    require_columns(df, table, "impute_price", ["price"])
    flag = df["price"].isna()
    return df.assign(price=df["price"].fillna(cfg.price_sentinel), **{cfg.price_flag_column: flag}), None


def normalise_actions(df: pd.DataFrame, table: str, cfg: CleaningConfig) -> tuple[pd.DataFrame, None]:
    """Return the frame with action spellings mapped to one name (``added-to-cart`` -> ``added_to_cart``)."""
    require_columns(df, table, "normalise_actions", [C.ACTION])
    return df.assign(**{C.ACTION: df[C.ACTION].replace(cfg.action_aliases)}), None


def impute_subdomain(df: pd.DataFrame, table: str, cfg: CleaningConfig) -> tuple[pd.DataFrame, None]:
    """Return the frame with null subdomains set to the configured sentinel."""
    require_columns(df, table, "impute_subdomain", [C.SUBDOMAIN])
    return df.assign(**{C.SUBDOMAIN: df[C.SUBDOMAIN].fillna(cfg.subdomain_sentinel)}), None


def drop_unknown_items(df: pd.DataFrame, table: str, known: pd.Index) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (events whose item is in the catalogue, the others with reason)."""
    unknown = ~df[C.ITEM].isin(known).to_numpy()
    return df[~unknown], df[unknown].assign(**{C.REASON: "item not in catalogue"})


StepFn = Callable[[pd.DataFrame, str, CleaningConfig], tuple[pd.DataFrame, pd.DataFrame | None]]


def plan_steps(table: str, cfg: CleaningConfig, known_items: pd.Index | None) -> list[tuple[str, StepFn]]:
    """Return the (name, function) steps that apply to ``table``, in order."""
    family = table.split(".")[0]
    steps: list[tuple[str, StepFn]] = []
    if family == "events" and cfg.action_aliases:  # before dedupe: two spellings of one event are one event
        steps.append(("normalise_actions", normalise_actions))
    if rule_for(cfg.dedupe_keys, table):
        steps.append(("dedupe", dedupe_rows))
    if rule_for(cfg.drop_missing_price, table):
        steps.append(("drop_missing_price", drop_missing_price))
    if rule_for(cfg.price_sentinel_tables, table):
        steps.append(("impute_price", impute_price))
    steps += [("impute_int", impute_ints)] if rule_for(cfg.impute_int, table) else []
    steps += [("impute_str", impute_strs)] if rule_for(cfg.impute_str, table) else []
    if family == "events":
        steps += [("impute_subdomain", impute_subdomain)] if cfg.subdomain_sentinel is not None else []
    if family == "events" and cfg.drop_events_unknown_items:
        if known_items is None:
            raise ValueError(f"{table}: cleaning.drop_events_unknown_items is set but no item catalogue was given")
        steps.append(("drop_unknown_items", lambda df, t, c: drop_unknown_items(df, t, known_items)))
    return steps


def clean_table(df: pd.DataFrame, table: str, cfg: CleaningConfig, known_items: pd.Index | None = None,
                source_file: str | None = None) -> CleanResult:
    """Return the cleaned table, its quarantined rows (with ``reason``) and one CleanStep per step applied."""
    current, dropped, steps = df, [], []
    for name, step in plan_steps(table, cfg, known_items):
        kept, lost = step(current, table, cfg)
        lost = current.iloc[:0].assign(**{C.REASON: pd.Series(dtype=str)}) if lost is None else lost
        steps.append(CleanStep(name, table, len(current), len(kept), len(lost), count_missing(kept), source_file))
        dropped.append(lost)
        current = kept
    lost_rows = [d for d in dropped if len(d)]
    empty = df.iloc[:0].assign(**{C.REASON: pd.Series(dtype=str)})
    quarantine = pd.concat(lost_rows, ignore_index=True) if lost_rows else empty
    if source_file is not None and C.SOURCE_FILE not in quarantine:
        quarantine[C.SOURCE_FILE] = source_file
    return CleanResult(table, current.reset_index(drop=True), quarantine, steps)


STEP_COUNTS = ["rows_in", "rows_kept", "rows_quarantined", "missing_after"]


def steps_frame(steps: list[CleanStep]) -> pd.DataFrame:
    """Return one row per (table, step), counts summed over the table's partitions, with retention per step."""
    rows = [{"table": s.table, "step": s.name, "rows_in": s.rows_in, "rows_kept": s.rows_kept,
             "rows_quarantined": s.rows_quarantined, "missing_after": sum(s.missing_after.values())} for s in steps]
    out = pd.DataFrame(rows, columns=["table", "step", *STEP_COUNTS])
    out = out.groupby(["table", "step"], sort=False, as_index=False)[STEP_COUNTS].sum()
    return out.assign(retention=out["rows_kept"] / out["rows_in"].where(out["rows_in"] > 0))


def retention_by_table(steps: list[CleanStep]) -> pd.DataFrame:
    """Return rows before and after cleaning and the share retained, per table, summed over its partitions.

    Each partition's steps are a chain (its first step's input, its last step's output), so a
    table's retention is at most 1.
    """
    frame = pd.DataFrame([{"table": s.table, "partition": s.partition or "", "rows_in": s.rows_in, "rows_kept": s.rows_kept,
                           "rows_quarantined": s.rows_quarantined} for s in steps],
                         columns=["table", "partition", "rows_in", "rows_kept", "rows_quarantined"])
    chains = frame.groupby(["table", "partition"], sort=False).agg(
        rows_before=("rows_in", "first"), rows_after=("rows_kept", "last"), quarantined=("rows_quarantined", "sum"))
    out = chains.groupby(level="table", sort=False).sum()
    return out.assign(retention=out["rows_after"] / out["rows_before"].where(out["rows_before"] > 0)).reset_index()


def count_reasons(results: list[CleanResult]) -> pd.DataFrame:
    """Return quarantined row counts per (table, reason)."""
    rows = [{"table": r.table, "reason": reason, "rows": int(n)}
            for r in results for reason, n in r.quarantine[C.REASON].value_counts(sort=False).items()]
    return pd.DataFrame(rows, columns=["table", "reason", "rows"])


def write_quarantine(result: CleanResult, out_dir: Path | str) -> Path:
    """Write the quarantined rows (even none) to ``out_dir/<table>.parquet`` atomically; return the path."""
    return io.write_table(result.quarantine.reset_index(drop=True), Path(out_dir) / f"{result.table}.parquet")

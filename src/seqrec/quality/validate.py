"""Running the Great Expectations suites: computed check columns, the raw and cleaned passes, summaries.

The raw pass reports findings (failed checks with their observed rates); the cleaned pass is a
gate: a failure raises ``QualityGateError`` (or becomes a warning when
``QualityConfig.on_cleaned_failure == "warn"``). Great Expectations is imported lazily: it
costs seconds to import.
"""

from __future__ import annotations

import functools
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from expectations import suites as S
from seqrec import columns as C
from seqrec.config import SuiteParams

if TYPE_CHECKING:
    import distributed

Stage = Literal["raw", "cleaned"]
_GX_SETUP = threading.Lock()  # context creation and registration touch GX's process-wide state
_GX_PARSE = threading.Lock()


def serialise_suite_parameter_parsing() -> None:
    """Make GX's ``$PARAMETER`` parsing safe for the threads that validate days side by side.

    GX 1.x parses every suite parameter with one process-wide parser whose expression stack is
    shared, and pyparsing probes each parse action's arity on its first calls: two threads
    parsing at once get wrong values or "pop from empty list" / "missing 1 required positional
    argument" errors (RELIABILITY.md). The module-level function is wrapped once in a lock;
    parsing a parameter takes microseconds.
    """
    from great_expectations.core import suite_parameters as gx_params

    if getattr(gx_params.parse_suite_parameter, "_seqrec_serialised", False):
        return
    parse = gx_params.parse_suite_parameter

    @functools.wraps(parse)
    def serialised(*args, **kwargs):
        with _GX_PARSE:
            return parse(*args, **kwargs)

    serialised._seqrec_serialised = True
    gx_params.parse_suite_parameter = serialised


class QualityError(ValueError):
    """A table cannot be validated (missing column, expectation error); the message names both."""


class QualityGateError(QualityError):
    """The cleaned pass failed; the message names table, check, column, observed value and threshold."""

    def __init__(self, message: str, validations: list["TableValidation"]):
        super().__init__(message)
        self.validations = validations


@dataclass(frozen=True)
class References:
    """Key sets for referential checks: catalogue item ids per domain, brand ids."""

    items: dict[str, pd.Index] = field(default_factory=dict)
    brands: pd.Index | None = None
    _arrow: dict[str, "pa.Array | pd.Index"] = field(default_factory=dict, compare=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    def index_of(self, name: str) -> pd.Index:
        """Return the reference set ``name``: ``items.<domain>``, ``items`` (every domain's) or ``brands``."""
        if name == "items":
            return pd.Index(np.concatenate([i.to_numpy() for i in self.items.values()]))
        return self.brands if name == "brands" else self.items[name.split(".", 1)[1]]

    def arrow_set(self, name: str) -> "pa.Array | pd.Index":
        """Return the reference set ``name`` (see ``index_of``) as an Arrow array, built once per set by one thread
        (the Index itself when Arrow cannot hold its values, e.g. mixed types: pandas then compares)."""
        with self._lock:
            if name not in self._arrow:
                index = self.index_of(name)
                try:
                    self._arrow[name] = pa.array(index, from_pandas=True)
                except (pa.ArrowInvalid, pa.ArrowTypeError):
                    self._arrow[name] = index
            return self._arrow[name]


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one expectation on one table (or partition)."""

    table: str
    stage: str
    partition: str | None
    check: str
    expectation: str
    column: str | None
    success: bool
    observed: float | None  # share of judged rows that pass (row count for "rows")
    threshold: float | None  # mostly (or minimum row count)
    unexpected_count: int | None
    unexpected_percent: float | None  # defect rate among judged rows, in percent
    element_count: int | None

    def describe(self) -> str:
        """Return a one-line account naming table, check, column, observed value and threshold."""
        where = self.table + (f"[{self.partition}]" if self.partition else "")
        rate = "" if self.unexpected_count is None else f", {self.unexpected_count} unexpected ({self.unexpected_percent:.4g}%)"
        return (f"{where} {self.stage}: {self.check} ({self.expectation}) on column {self.column}: "
                f"observed {self.observed:.6g} vs threshold {self.threshold}{rate}")


@dataclass
class TableValidation:
    """All check results of one table (or partition) in one pass."""

    table: str
    stage: str
    partition: str | None
    rows: int
    checks: list[CheckResult]
    skipped: dict[str, str] = field(default_factory=dict)  # check -> why it was not run
    warnings: list[str] = field(default_factory=list)
    gx_result: str | None = None  # GX's own result of this pass, as its stores write it (Data Docs show it)

    @property
    def success(self) -> bool:
        return all(c.success for c in self.checks)

    def failures(self) -> list[CheckResult]:
        """Return the failed checks."""
        return [c for c in self.checks if not c.success]


def build_references(frames: dict[str, pd.DataFrame]) -> References:
    """Return the catalogue item ids (per domain) and brand ids found in ``frames`` (``items.<d>``, ``brands``)."""
    items = {t.split(".")[1]: pd.Index(f[C.ITEM].dropna().unique()) for t, f in frames.items() if t.startswith("items.")}
    brands = pd.Index(frames["brands"]["brand_id"].dropna().unique()) if "brands" in frames else None
    return References(items, brands)


def measure_embedding_len(df: pd.DataFrame, stage: Stage) -> pd.Series | None:
    """Return embedding lengths (Int64, null where missing), or None without an embedding column.

    The raw pass prefers the reader's ``embedding_len`` (lengths as stored, before repair);
    the cleaned pass measures the vectors it would hand on.
    """
    if S.EMBEDDING_LEN in df and (stage == "raw" or "embedding" not in df):
        lengths = pd.Series(df[S.EMBEDDING_LEN], dtype="Int64")
        return lengths.mask(lengths < 0)  # the reader's repair mode marks a null row with a negative length
    if "embedding" not in df:
        return None
    lengths = [None if v is None or (isinstance(v, float) and np.isnan(v)) else len(v) for v in df["embedding"]]
    return pd.Series(lengths, index=df.index, dtype="Int64")


LARGE_SET = 100_000  # reference sets above this many ids are looked up in the column's distinct values


def is_in(values: pd.Series, known: "pa.Array | pd.Index") -> np.ndarray:
    """Return where ``values`` are in ``known`` (a null never is), computed by Arrow: pandas' ``isin`` on Arrow strings
    turns the whole reference set (millions of catalogue ids) into Python objects on every call."""
    if isinstance(known, pd.Index):
        return values.isin(known).to_numpy()
    try:
        column = pa.array(values, from_pandas=True)
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        if known.type != column.type and kind(known.type) != kind(column.type):
            raise pa.ArrowTypeError(f"{known.type} ids, {column.type} values")  # "1" is not 1 to pandas either
        value_set = known if known.type == column.type else known.cast(column.type)
        if len(value_set) <= LARGE_SET:
            return pc.is_in(column, value_set=value_set, skip_nulls=True).to_numpy(zero_copy_only=False)
        # a large set (a catalogue of millions): Arrow would hash all of it on every call; hash the column's distinct
        # values instead and look the set up in them (3.6M ids, 1.4M rows: 0.31 s instead of 1.18 s)
        encoded = pc.dictionary_encode(column)
        found = np.zeros(len(encoded.dictionary) + 1, dtype=bool)  # the last slot: null rows (never members)
        found[pc.index_in(value_set, value_set=encoded.dictionary).drop_null().to_numpy()] = True
        return found[encoded.indices.fill_null(len(encoded.dictionary)).to_numpy()]
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):  # mixed or mismatched types: pandas' rule
        return values.isin(known.to_pandas()).to_numpy()


def kind(dtype: "pa.DataType") -> str:
    """Return "text", "number" or the type's name: Arrow casts within a kind only, as pandas compares."""
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        return "text"
    return "number" if pa.types.is_integer(dtype) or pa.types.is_floating(dtype) else str(dtype)


def flag_membership(values: pd.Series, known: "pa.Array | pd.Index", judge: pd.Series | None = None) -> pd.Series:
    """Return a nullable boolean: value in ``known``, null where ``judge`` is False (not judged)."""
    flags = pd.Series(is_in(values, known), index=values.index, dtype="boolean")
    return flags if judge is None else flags.mask(~judge.to_numpy())


def brand_judged(brand: pd.Series) -> pd.Series:
    """Return where a brand id is a real id (not null, not a negative sentinel)."""
    numeric = pd.to_numeric(brand, errors="coerce")
    return numeric.notna() & (numeric >= 0)


def add_reference_columns(out: pd.DataFrame, table: str, refs: References | None, skipped: dict[str, str]) -> None:
    """Add ``item_known`` / ``brand_known`` / ``linked`` to ``out`` in place, or record why not in ``skipped``."""
    family, domain = S.family_of(table), S.domain_of(table)
    if family == "events":
        if refs is not None and domain in refs.items:
            out[S.ITEM_KNOWN] = flag_membership(out[C.ITEM], refs.arrow_set(f"items.{domain}"))
        else:
            skipped[S.ITEM_KNOWN] = f"no items.{domain} catalogue given"
    if "brand_id" in out and family != "brands":
        if refs is not None and refs.brands is not None:
            out[S.BRAND_KNOWN] = flag_membership(out["brand_id"], refs.arrow_set("brands"),
                                                 brand_judged(out["brand_id"]))
        else:
            skipped[S.BRAND_KNOWN] = "no brands table given"
    if family == "receipts":
        if refs is not None and refs.items:
            out[S.LINKED] = flag_membership(out["approximate_item_id"], refs.arrow_set("items"))
        else:
            skipped[S.LINKED] = "no item catalogue given"


def add_check_columns(df: pd.DataFrame, table: str, stage: Stage, params: SuiteParams,
                      refs: References | None = None) -> tuple[pd.DataFrame, dict[str, str]]:
    """Return a copy of ``df`` with the computed check columns, and {check: reason} for checks that cannot run."""
    out, skipped = df.copy(deep=False), {}
    lengths = measure_embedding_len(df, stage)
    if lengths is not None:
        out[S.EMBEDDING_LEN] = lengths
    else:
        skipped[S.EMBEDDING_LEN] = "no embedding column (excluded at read)"
    keys = params.keys_for(table)
    if keys:
        missing = [k for k in keys if k not in df]
        if missing:
            raise QualityError(f"{table}: key column(s) {missing} for the uniqueness check are absent (have {list(df.columns)})")
        out[S.REPEAT_KEY] = df.duplicated(subset=list(keys), keep="first")
    add_reference_columns(out, table, refs, skipped)
    return out, skipped


def to_check_result(res: Any, table: str, stage: str, partition: str | None) -> CheckResult:
    """Return a CheckResult from one GX ExpectationValidationResult; raise if the expectation errored."""
    cfg, info = res.expectation_config, res.result or {}
    kwargs, meta = cfg.kwargs, cfg.meta or {}
    raise_if_errored(res, table, meta.get("check"), kwargs.get("column"))
    if "observed_value" in info:  # table-level: row count
        observed, threshold, count, pct = float(info["observed_value"]), kwargs.get("min_value"), None, None
    else:
        count, pct = int(info.get("unexpected_count") or 0), float(info.get("unexpected_percent") or 0.0)
        observed, threshold = 1.0 - pct / 100.0, kwargs.get("mostly", 1.0)
    return CheckResult(table, stage, partition, meta.get("check", cfg.type), cfg.type, kwargs.get("column"),
                       bool(res.success), observed, threshold, count, pct, info.get("element_count"))


def raise_if_errored(res: Any, table: str, check: str | None, column: str | None) -> None:
    """Raise QualityError when GX could not evaluate an expectation (never report it as a plain failure)."""
    info = res.exception_info or {}
    found = [info] if "raised_exception" in info else list(info.values())
    messages = [e.get("exception_message") for e in found if isinstance(e, dict) and e.get("raised_exception")]
    if messages:
        raise QualityError(f"{table}: check '{check}' on column {column} could not run: {messages[0]}")


def run_suite(df: pd.DataFrame, table: str, stage: Stage, params: SuiteParams, skip: dict[str, str], keep: bool = True
              ) -> tuple[list[CheckResult], str | None]:
    """Return the check results of one suite on a frame that already holds its check columns, and GX's own result
    (JSON, as GX's validation results store writes it; None unless ``keep``)."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    with _GX_SETUP:
        serialise_suite_parameter_parsing()
        ctx = gx.get_context(mode="ephemeral")
        ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
        asset = ctx.data_sources.add_pandas("seqrec").add_dataframe_asset(table)
        batch = asset.add_batch_definition_whole_dataframe("whole")
        suite = ctx.suites.add(S.build_suite(table, stage, params, skip))
        vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=f"{table}.{stage}.{uuid.uuid4().hex}", data=batch, suite=suite))
    values = S.suite_parameters(table, stage, params, skip)
    result = vd.run(batch_parameters={"dataframe": df}, expectation_parameters=values, result_format="BASIC")
    kept = ctx.validation_results_store.serialize(result) if keep else None
    return [to_check_result(r, table, stage, None) for r in result.results], kept


def check_columns_present(df: pd.DataFrame, table: str, stage: Stage, params: SuiteParams, skip: dict[str, str]) -> None:
    """Raise QualityError naming the table and column when a suite's column is absent from ``df``."""
    for check in S.list_checks(table, stage, params, skip):
        if check.column is not None and check.column not in df:
            raise QualityError(f"{table}: column '{check.column}' needed by check '{check.name}' is absent (have {list(df.columns)})")


def suite_columns(df: pd.DataFrame, table: str, stage: Stage, params: SuiteParams, skip: dict[str, str]) -> list[str]:
    """Return the columns of ``df`` the suite reads (checked columns, row-condition columns): GX's row conditions copy
    the frame they are given, so it gets no others."""
    checks = S.list_checks(table, stage, params, skip)
    used = {c.column for c in checks} | {c.only_where_not_in[0] for c in checks if c.only_where_not_in}
    return [c for c in df.columns if c in used]


def measure_table(df: pd.DataFrame, table: str, stage: Stage, params: SuiteParams,
                  refs: References | None = None, partition: str | None = None) -> TableValidation:
    """Return the validation of one frame without applying the cleaned-pass gate."""
    frame, skipped = add_check_columns(df, table, stage, params, refs)
    check_columns_present(frame, table, stage, params, skipped)
    results, gx_result = run_suite(frame[suite_columns(frame, table, stage, params, skipped)], table, stage, params, skipped)
    order = {c.name: i for i, c in enumerate(S.list_checks(table, stage, params, skipped))}
    results = sorted((_with_partition(r, partition) for r in results), key=lambda r: order.get(r.check, len(order)))
    return TableValidation(table, stage, partition, len(df), results, skipped, gx_result=gx_result)


def _with_partition(result: CheckResult, partition: str | None) -> CheckResult:
    """Return the result labelled with its partition."""
    return CheckResult(**{**{f.name: getattr(result, f.name) for f in fields(result)}, "partition": partition})


def apply_gate(validations: list[TableValidation], params: SuiteParams) -> list[TableValidation]:
    """Return the validations; cleaned-pass failures raise QualityGateError or become warnings."""
    failed = [c for v in validations if v.stage == "cleaned" for c in v.failures()]
    if failed and params.on_cleaned_failure == "fail":
        lines = "\n  ".join(c.describe() for c in failed)
        raise QualityGateError(f"cleaned data failed {len(failed)} check(s):\n  {lines}", validations)
    for v in validations:
        if v.stage == "cleaned":
            v.warnings.extend(c.describe() for c in v.failures())
    return validations


def validate_table(df: pd.DataFrame, table: str, stage: Stage, params: SuiteParams,
                   refs: References | None = None, partition: str | None = None) -> TableValidation:
    """Return the validation of one table; raises QualityGateError on a failed cleaned pass in "fail" mode."""
    return apply_gate([measure_table(df, table, stage, params, refs, partition)], params)[0]


def validate_partitions(frames: dict[str, pd.DataFrame], table: str, stage: Stage, params: SuiteParams,
                        client: "distributed.Client | None" = None, refs: References | None = None) -> list[TableValidation]:
    """Return one validation per partition (name -> frame), run on a Dask client or a thread pool, then gated."""
    names = list(frames)
    args = ([frames[n] for n in names], [table] * len(names), [stage] * len(names), [params] * len(names),
            [refs] * len(names), names)
    if client is not None:
        results = client.gather(client.map(measure_table, *args, pure=False))
    else:
        with ThreadPoolExecutor(max_workers=params.workers) as pool:
            results = list(pool.map(measure_table, *args))
    return apply_gate(results, params)


def summarise_validations(validations: list[TableValidation]) -> pd.DataFrame:
    """Return one tidy row per (table, stage, partition, check) with observed value, threshold and counts."""
    rows = [{**{f.name: getattr(c, f.name) for f in fields(c)}, "rows": v.rows} for v in validations for c in v.checks]
    columns = [f.name for f in fields(CheckResult)] + ["rows"]
    return pd.DataFrame(rows, columns=columns)


def summarise_tables(summary: pd.DataFrame) -> pd.DataFrame:
    """Return one row per (table, stage): rows, checks run, checks failed, overall success."""
    grouped = summary.groupby(["table", "stage"], sort=False)
    out = grouped.agg(checks=("check", "size"), failed=("success", lambda s: int((~s.astype(bool)).sum())))
    rows = summary.drop_duplicates(["table", "stage", "partition"]).groupby(["table", "stage"], sort=False)["rows"].sum()
    return out.assign(rows=rows, success=out["failed"] == 0).reset_index()


def measure_missingness(frames: dict[str, pd.DataFrame], stage: Stage) -> pd.DataFrame:
    """Return missing-value counts and rates per (table, column) of ``frames``."""
    rows = []
    for table, df in frames.items():
        for column in df.columns:
            missing = int(df[column].isna().sum())
            rows.append({"table": table, "stage": stage, "column": column, "rows": len(df), "missing": missing,
                         "rate": missing / len(df) if len(df) else 0.0})
    return pd.DataFrame(rows, columns=["table", "stage", "column", "rows", "missing", "rate"])

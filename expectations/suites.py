"""Great Expectations suites as code: one builder per T-ECD table, thresholds as run-time parameters.

A suite is first described as a list of ``Check`` (plain data, no GX import), then turned
into a ``gx.ExpectationSuite`` by ``build_suite``. Every ``mostly`` and row-count threshold is
a GX suite parameter (``{"$PARAMETER": ...}``) whose value ``suite_parameters`` reads from
``SuiteParams`` (the quality section and the cleaning policy it checks) at run time, so dev and prod
validate with the same suite.

Some checks need a computed column that ``seqrec.quality.validate.add_check_columns`` adds first:
``embedding_len`` (list length), ``repeat_key`` (the row's key already appeared earlier: the
share that deduplication removes, unlike GX's uniqueness which counts every member of a
duplicated group), ``item_known`` / ``brand_known`` (referential integrity) and ``linked``
(receipt line found in a catalogue).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Collection, Literal

from seqrec import columns as C
from seqrec.config import SuiteParams

if TYPE_CHECKING:
    import great_expectations as gx

Stage = Literal["raw", "cleaned"]
DOMAINS = ("marketplace", "retail", "offers")
TABLES = (
    "users",
    "brands",
    *(f"items.{d}" for d in DOMAINS),
    *(f"events.{d}" for d in DOMAINS),
    "payments",
    "receipts",
    "reviews",
)

# Computed columns (see module docstring).
EMBEDDING_LEN = "embedding_len"
REPEAT_KEY = "repeat_key"
ITEM_KNOWN = "item_known"
BRAND_KNOWN = "brand_known"
LINKED = "linked"
REFERENCE_CHECKS = ("item_known", "brand_known", "linked")


@dataclass(frozen=True)
class Check:
    """One expectation: a stable check name, the GX class name, its column and fixed kwargs."""

    name: str
    expectation: str
    column: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    threshold: Literal["mostly", "min_value", None] = "mostly"
    only_where_not_in: tuple[str, tuple[Any, ...]] | None = None  # (column, values): rows judged


def family_of(table: str) -> str:
    """Return the table family (``items.retail`` -> ``items``)."""
    if table not in TABLES:
        raise KeyError(f"unknown table '{table}' (known: {', '.join(TABLES)})")
    return table.split(".")[0]


def domain_of(table: str) -> str | None:
    """Return the domain of a per-domain table, or None."""
    return table.split(".")[1] if "." in table else None


def not_null(column: str, name: str | None = None, **kwargs: Any) -> Check:
    """Return a not-null check named after its column."""
    return Check(name or column, "ExpectColumnValuesToNotBeNull", column, kwargs)


def in_set(column: str, values: Collection[Any], name: str | None = None) -> Check:
    """Return a value-set check (nulls are not judged)."""
    return Check(name or f"{column}.values", "ExpectColumnValuesToBeInSet", column, {"value_set": list(values)})


def between(column: str, low: float | None, high: float | None, name: str | None = None) -> Check:
    """Return a range check (inclusive, nulls are not judged)."""
    return Check(name or f"{column}.range", "ExpectColumnValuesToBeBetween", column, {"min_value": low, "max_value": high})


def flag_true(column: str, name: str | None = None) -> Check:
    """Return a check that a computed boolean column is True (nulls are not judged)."""
    return in_set(column, [True], name or column)


def common_checks(table: str, stage: Stage, params: SuiteParams) -> list[Check]:
    """Return the row-count and key-uniqueness checks every table shares."""
    checks = [Check("rows", "ExpectTableRowCountToBeBetween", None, {}, "min_value")]
    if params.keys_for(table):
        checks.append(in_set(REPEAT_KEY, [False], "key_unique"))
    return checks


def code_checks(stage: Stage, params: SuiteParams) -> list[Check]:
    """Return range checks of the user code columns (the cleaned pass also accepts the sentinel)."""
    out = []
    for column, (low, high) in params.code_ranges.items():
        low = min(low, params.int_sentinel) if stage == "cleaned" else low
        out.append(between(column, low, high))
    return out


def users_checks(table: str, stage: Stage, params: SuiteParams) -> list[Check]:
    """Return the users checks."""
    return [not_null(C.USER), not_null("socdem_cluster"), not_null("region"), *code_checks(stage, params)]


def brands_checks(table: str, stage: Stage, params: SuiteParams) -> list[Check]:
    """Return the brands checks."""
    dim = params.embedding_dims["brands"]
    return [not_null("brand_id"), between(EMBEDDING_LEN, dim, dim, EMBEDDING_LEN)]


def items_checks(table: str, stage: Stage, params: SuiteParams) -> list[Check]:
    """Return the per-domain items checks."""
    dim = params.embedding_dims["items"]
    return [
        not_null(C.ITEM),
        not_null("brand_id"),
        not_null("category"),
        not_null("subcategory"),
        not_null("price"),
        between("price", *params.price_range),
        between(EMBEDDING_LEN, dim, dim, EMBEDDING_LEN),
        flag_true(BRAND_KNOWN),
    ]


def events_checks(table: str, stage: Stage, params: SuiteParams) -> list[Check]:
    """Return the per-domain events checks; subdomain nulls are judged apart from the actions that explain them."""
    domain = domain_of(table)
    subdomains = params.subdomains[domain] + (params.subdomain_sentinels if stage == "cleaned" else ())
    checks = [not_null(C.TIMESTAMP), not_null(C.USER), not_null(C.ITEM), not_null(C.ACTION)]
    checks += [in_set(C.ACTION, params.actions_for(domain, stage)), in_set(C.OS, params.os_values)]
    checks += [in_set(C.SUBDOMAIN, subdomains), flag_true(ITEM_KNOWN)]
    if domain == "offers":  # subdomain and os are not filled in offers
        return checks
    checks.append(not_null(C.OS))  # the value-set check does not judge nulls: a missing os is a finding of its own
    explained = [a for a in params.action_types[domain] if a in params.subdomain_null_actions]
    if explained:  # null only where the action explains it (marketplace likes)
        checks.append(Check("subdomain.unexplained", "ExpectColumnValuesToNotBeNull", C.SUBDOMAIN,
                            only_where_not_in=(C.ACTION, tuple(explained))))
    if stage == "raw" or not explained:
        checks.append(not_null(C.SUBDOMAIN))
    return checks


def payments_checks(table: str, stage: Stage, params: SuiteParams) -> list[Check]:
    """Return the payment-event checks."""
    return [
        not_null(C.TIMESTAMP),
        not_null(C.USER),
        not_null("transaction_hash"),
        not_null("brand_id"),
        not_null("price"),
        between("price", *params.price_range),
        flag_true(BRAND_KNOWN),
    ]


def receipts_checks(table: str, stage: Stage, params: SuiteParams) -> list[Check]:
    """Return the receipt checks; linkage is a raw finding only (cleaning cannot change it)."""
    checks = payments_checks(table, stage, params)
    checks += [not_null("approximate_item_id"), between("count", 1, None)]
    return checks + ([flag_true(LINKED)] if stage == "raw" else [])


def reviews_checks(table: str, stage: Stage, params: SuiteParams) -> list[Check]:
    """Return the review checks."""
    dim = params.embedding_dims["reviews"]
    return [
        not_null(C.TIMESTAMP),
        not_null(C.USER),
        not_null("brand_id"),
        not_null("rating"),
        between("rating", *params.rating_range),
        between(EMBEDDING_LEN, dim, dim, EMBEDDING_LEN),
        flag_true(BRAND_KNOWN),
    ]


BUILDERS = {
    "users": users_checks,
    "brands": brands_checks,
    "items": items_checks,
    "events": events_checks,
    "payments": payments_checks,
    "receipts": receipts_checks,
    "reviews": reviews_checks,
}


def list_checks(table: str, stage: Stage, params: SuiteParams, skip: Collection[str] = ()) -> list[Check]:
    """Return the checks of one table and stage, without those named in ``skip``."""
    if stage not in ("raw", "cleaned"):
        raise ValueError(f"stage must be 'raw' or 'cleaned', got {stage!r}")
    checks = common_checks(table, stage, params) + BUILDERS[family_of(table)](table, stage, params)
    return [c for c in checks if c.name not in skip]


def parameter_name(table: str, check: Check) -> str:
    """Return the GX suite-parameter name holding a check's threshold."""
    return f"{table}.{check.name}.{check.threshold}".replace(".", "__").replace("-", "_")


def threshold_of(table: str, check: Check, stage: Stage, params: SuiteParams) -> float | int | None:
    """Return a check's threshold for this stage, read from the config."""
    if check.threshold == "min_value":
        return params.min_rows
    if check.threshold is None:
        return None
    if check.name == LINKED:
        return params.min_receipt_linkage
    key = f"{table}.{check.name}"
    mostly = params.cleaned_mostly if stage == "cleaned" else params.mostly
    return mostly.get(key, params.default_mostly)


def suite_parameters(table: str, stage: Stage, params: SuiteParams, skip: Collection[str] = ()) -> dict[str, Any]:
    """Return the run-time values of a suite's parameters (thresholds from the config)."""
    return {
        parameter_name(table, c): threshold_of(table, c, stage, params)
        for c in list_checks(table, stage, params, skip)
        if c.threshold is not None
    }


def build_expectation(table: str, check: Check) -> "gx.expectations.Expectation":
    """Return the GX expectation of a check, its threshold left as a suite parameter."""
    import great_expectations as gx

    kwargs = dict(check.kwargs)
    if check.column is not None:
        kwargs["column"] = check.column
    if check.threshold is not None:
        kwargs[check.threshold] = {"$PARAMETER": parameter_name(table, check)}
    if check.only_where_not_in is not None:
        from great_expectations.expectations.row_conditions import Column

        column, values = check.only_where_not_in
        kwargs["row_condition"] = Column(column).is_not_in(list(values))
    meta = {"check": check.name, "table": table}
    return getattr(gx.expectations, check.expectation)(**kwargs, meta=meta)


def build_suite(table: str, stage: Stage, params: SuiteParams, skip: Collection[str] = ()) -> "gx.ExpectationSuite":
    """Return the GX suite of one table and stage (thresholds are parameters: see ``suite_parameters``)."""
    import great_expectations as gx

    expectations = [build_expectation(table, c) for c in list_checks(table, stage, params, skip)]
    return gx.ExpectationSuite(name=f"{table}.{stage}", expectations=expectations)

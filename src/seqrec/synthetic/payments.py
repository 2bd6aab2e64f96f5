"""Synthetic T-ECD payments, receipts and reviews of one day, with TECD.md's defects.

A payment is one transaction (user, brand, price); some come with a receipt basket whose
lines share its timestamp, user and ``transaction_hash``. Only ``receipt_linkage`` of the
lines name a catalogue item (the real "linkage problem"); the others carry ids of the same
form that no items table holds. Matched lines of a basket share one latent intent, so
baskets carry co-purchase signal.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from seqrec import columns as C
from seqrec.config import GeneratorConfig
from seqrec.synthetic.catalogue import (
    ITEM_PREFIX,
    STREAM_PAYMENTS,
    STREAM_REVIEWS,
    Catalogue,
    DomainCatalogue,
    defect_mask,
    embedding_array,
    exact_count,
    prefixed_strings,
    ragged_lengths,
    rng_for,
    sample_cum,
    search_sorted,
)
from seqrec.synthetic.schemas import STRING, TECD_SCHEMAS

NOISE_BASKETS = 0.005  # share of baskets with 51..200 lines (the study drops > 50 as noise)
RATING_SHARES = np.array([0.05, 0.04, 0.08, 0.20, 0.63])  # ratings 1..5


def link_domain(cat: Catalogue) -> DomainCatalogue:
    """Return the catalogue that receipt lines link to: retail if generated, else the first domain."""
    return cat.domains.get("retail") or next(iter(cat.domains.values()))


def day_times(rng: np.random.Generator, day: int, n: int) -> np.ndarray:
    """Return n sorted timestamps (µs) uniform over ``day``."""
    return np.sort(day * C.MICROS_PER_DAY + rng.integers(0, C.MICROS_PER_DAY, n))


def hashes(rng: np.random.Generator, n: int) -> pa.Array:
    """Return n random 16-hex-digit transaction hashes."""
    return pa.array([f"{x:016x}" for x in rng.integers(0, 1 << 63, n).tolist()], STRING)


def payments_day(cfg: GeneratorConfig, cat: Catalogue, day: int) -> tuple[pa.Table, pa.Table, dict[str, int]]:
    """Return the payments and receipts files of ``day`` and their defect counts."""
    rng = rng_for(cfg.seed, STREAM_PAYMENTS, day)
    n = exact_count(rng, 1, cfg.events / cfg.days * cfg.payments_ratio)
    time, user = day_times(rng, day, n), sample_cum(rng, cat.user_cum, n)
    brand, tx = sample_cum(rng, cat.brand_cum, n), hashes(rng, n)
    no_brand = defect_mask(rng, n, cfg.defects.payments_missing_brand)
    no_price = defect_mask(rng, n, cfg.defects.payments_missing_price)
    payments = pa.Table.from_arrays(
        [
            pa.array(time, pa.int64()).cast(pa.duration("us")),
            pa.array(cat.user_ids[user], pa.uint64()),
            pa.array(cat.brand_ids[brand], pa.uint64(), mask=no_brand),
            pa.array(rng.normal(0.0, 2.0, n).clip(-10, 10), pa.float64(), mask=no_price),
            tx,
        ],
        schema=TECD_SCHEMAS["payments"],
    )
    with_receipt = np.flatnonzero(rng.random(n) < cfg.receipts_share)
    receipts, counts = receipts_day(cfg, cat, rng, with_receipt, (time, user, brand, tx))
    counts |= {"payments_missing_brand": int(no_brand.sum()), "payments_missing_price": int(no_price.sum())}
    return payments, receipts, counts | {"payments.rows": n}


def basket_sizes(cfg: GeneratorConfig, rng: np.random.Generator, n: int) -> np.ndarray:
    """Return n basket sizes: geometric with mean ``basket_mean``, a few noise baskets above 50."""
    size = rng.geometric(1.0 / cfg.basket_mean, n)
    noise = rng.random(n) < NOISE_BASKETS
    return np.where(noise, rng.integers(51, 201, n), size).astype(np.int64)


def basket_items(dom: DomainCatalogue, rng: np.random.Generator, basket: np.ndarray) -> np.ndarray:
    """Return item indices (L,) for lines of baskets (L,): one latent intent per basket."""
    intent = sample_cum(rng, dom.intent_cum, int(basket.max(initial=-1)) + 1)[basket]
    pos = search_sorted(dom.member_cum, intent + rng.random(len(basket)))
    return dom.members[np.minimum(pos, dom.group_offsets[intent + 1] - 1)]


def receipt_item_ids(cfg: GeneratorConfig, cat: Catalogue, rng: np.random.Generator,
                     basket: np.ndarray) -> tuple[pa.Array, np.ndarray]:  # fmt: skip
    """Return (approximate_item_id (L,), lines linked to the catalogue)."""
    dom = link_domain(cat)
    linked = ~defect_mask(rng, len(basket), 1.0 - cfg.defects.receipt_linkage)
    matched = dom.ids.take(pa.array(basket_items(dom, rng, basket)))
    unknown = int(dom.numbers.max()) + 1 + rng.integers(0, 10 * dom.size, len(basket))  # no item holds these
    return pc.if_else(pa.array(linked), matched, prefixed_strings(ITEM_PREFIX[dom.domain], unknown)), linked


def receipts_day(cfg: GeneratorConfig, cat: Catalogue, rng: np.random.Generator, paid: np.ndarray,
                 payment: tuple) -> tuple[pa.Table, dict[str, int]]:  # fmt: skip
    """Return the receipt lines of the payments ``paid`` (indices into ``payment``'s arrays)."""
    time, user, brand, tx = payment
    size = basket_sizes(cfg, rng, len(paid))
    line_payment = np.repeat(paid, size)  # (L,)
    basket = np.repeat(np.arange(len(paid)), size)
    n = len(line_payment)
    item_ids, linked = receipt_item_ids(cfg, cat, rng, basket)
    no_brand = defect_mask(rng, n, cfg.defects.receipts_missing_brand)
    no_price = defect_mask(rng, n, cfg.defects.receipts_missing_price)
    table = pa.Table.from_arrays(
        [
            pa.array(time[line_payment], pa.int64()).cast(pa.duration("us")),
            pa.array(cat.user_ids[user[line_payment]], pa.uint64()),
            pa.array(cat.brand_ids[brand[line_payment]], pa.uint64(), mask=no_brand),
            item_ids,
            pa.array(1 + rng.poisson(0.3, n), pa.int64()),
            pa.array(rng.normal(0.0, 2.0, n).clip(-10, 10), pa.float64(), mask=no_price),
            tx.take(pa.array(line_payment, pa.int64())),
        ],
        schema=TECD_SCHEMAS["receipts"],
    )
    counts = {"receipts.rows": n, "receipts_linked": int(linked.sum()), "receipts_missing_brand": int(no_brand.sum())}
    return table, counts | {"receipts_missing_price": int(no_price.sum())}


def reviews_day(cfg: GeneratorConfig, cat: Catalogue, day: int) -> tuple[pa.Table, dict[str, int]]:
    """Return the reviews file of ``day`` (ratings 1-5, ragged embeddings) and its counts."""
    rng = rng_for(cfg.seed, STREAM_REVIEWS, day)
    n = exact_count(rng, 1, cfg.events / cfg.days * cfg.reviews_ratio)
    dim = cfg.review_embedding_dim
    lengths = ragged_lengths(rng, n, dim, cfg.defects.ragged_embeddings)
    table = pa.Table.from_arrays(
        [
            pa.array(day_times(rng, day, n), pa.int64()).cast(pa.duration("us")),
            pa.array(cat.user_ids[sample_cum(rng, cat.user_cum, n)], pa.uint64()),
            pa.array(cat.brand_ids[sample_cum(rng, cat.brand_cum, n)], pa.uint64()),
            pa.array(1 + sample_cum(rng, np.cumsum(RATING_SHARES), n), pa.int64()),
            embedding_array(rng.standard_normal((n, dim), dtype=np.float32), lengths),
        ],
        schema=TECD_SCHEMAS["reviews"],
    )
    return table, {"reviews.rows": n, "reviews_ragged_embedding": int((lengths != dim).sum())}

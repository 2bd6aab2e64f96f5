"""Synthetic T-ECD catalogue: users, brands, items and their latent intents (generated once per run).

Each item has a Zipf popularity and belongs to two latent intents (``groups``); an intent's
members, in a fixed order, form a cycle whose "successor" steps the sessions follow. The
catalogue is sized from the event scale and kept small relative to the events.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from seqrec import columns as C
from seqrec.config import GeneratorConfig
from seqrec.synthetic.schemas import EMBEDDING, STRING, TECD_SCHEMAS

DOMAIN_CODES = {"marketplace": 0, "retail": 1, "offers": 2}
ITEM_PREFIX = {"marketplace": "nfmcg_", "retail": "fmcg_", "offers": "offer_"}  # TECD.md names no offers prefix: ours
OS_NAMES = ("android", "ios", "other")
OS_SHARES = (0.66, 0.13, 0.21)  # real marketplace days 1272/1302: 0.69/0.14/0.17 and 0.63/0.11/0.26
SOCDEM_CODES, REGION_CODES = 22, 91
# User activity is lognormal; the user table is USER_POOL times the active users one would need at
# ``events_per_user`` each: about a quarter are active in a run, with a mean near ``events_per_user``
# and a median of 3-5 (real marketplace: median 3, mean ~12, max in the thousands).
USER_ACTIVITY_SIGMA, USER_POOL = 1.8, 4
EMBED_CHUNK = 65_536  # item rows per embedding chunk while writing items.pq
STREAM_CATALOGUE, STREAM_EVENTS, STREAM_PAYMENTS, STREAM_REVIEWS = 1, 2, 3, 4


def rng_for(seed: int, stream: int, *keys: int) -> np.random.Generator:
    """Return the generator for one stream (catalogue, a domain-day's events, ...) of a seed."""
    return np.random.default_rng([k % (1 << 63) for k in (seed, stream, *keys)])  # day -1 is a key too


def exact_count(rng: np.random.Generator, n: int, rate: float, stochastic: bool = True) -> int:
    """Return rate * n rounded: stochastically (floor plus a Bernoulli of the fraction) or to nearest.

    Day partitions round stochastically, so that a rate below one row per day still adds up
    over the days; tables written once round to nearest (the closest rate they can hold).
    """
    return int(np.floor(rate * n + rng.random())) if stochastic else int(round(rate * n))


def defect_mask(rng: np.random.Generator, n: int, rate: float, stochastic: bool = True) -> np.ndarray:
    """Return a boolean mask (n,) with exactly ``exact_count`` randomly placed True values."""
    mask = np.zeros(n, dtype=bool)
    k = min(n, exact_count(rng, n, rate, stochastic))
    if k:
        mask[rng.choice(n, k, replace=False)] = True
    return mask


def zipf_weights(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Return Zipf weights (n,) ``rank^-exponent`` assigned to a random permutation of ranks."""
    return (1.0 + rng.permutation(n)) ** -exponent


def sparse_ids(rng: np.random.Generator, n: int, base: int) -> np.ndarray:
    """Return n distinct int64 ids above ``base`` with random gaps, in random order."""
    return rng.permutation(base + np.cumsum(1 + rng.integers(0, 8, n)))


def prefixed_strings(prefix: str, numbers: np.ndarray) -> pa.Array:
    """Return large_string ``prefix<number>`` for each number (vectorised)."""
    digits = pc.cast(pa.array(numbers, pa.int64()), STRING)
    return pc.binary_join_element_wise(pa.scalar(prefix, STRING), digits, pa.scalar("", STRING))


@dataclass(frozen=True)
class DomainCatalogue:
    """One domain's items with popularity and latent intents, in sampling-ready CSR form."""

    domain: str
    ids: pa.Array  # (n,) large_string item ids
    numbers: np.ndarray  # (n,) int64 numeric part of the ids
    weight: np.ndarray  # (n,) float64 Zipf popularity
    groups: np.ndarray  # (n, k) int64 latent intents of each item, k = min(2, intents)
    members: np.ndarray  # (n * k,) int64 item indices, grouped by intent (CSR)
    group_offsets: np.ndarray  # (intents + 1,) int64
    member_cum: np.ndarray  # (n * k,) float64: g + cumulative weight share inside intent g
    intent_cum: np.ndarray  # (intents,) float64 cumulative intent popularity

    @property
    def size(self) -> int:
        return len(self.numbers)


@dataclass(frozen=True)
class Catalogue:
    """Everything generated once: users, brands and every domain's items."""

    user_ids: np.ndarray  # (U,) uint64
    user_cum: np.ndarray  # (U,) float64 cumulative activity share
    user_os: np.ndarray  # (U,) int8 index into OS_NAMES
    user_intent: np.ndarray  # (U,) int64 favourite-intent seed (per domain: + domain code)
    brand_ids: np.ndarray  # (B,) uint64 distinct
    brand_cum: np.ndarray  # (B,) float64 cumulative brand popularity
    domains: dict[str, DomainCatalogue]


def domain_events(cfg: GeneratorConfig, domain: str) -> float:
    """Return the total events the config asks of a domain over the whole range."""
    ratio = {"marketplace": 1.0, "retail": cfg.retail_events_ratio, "offers": cfg.offers_events_ratio}[domain]
    return cfg.events * ratio


def intent_csr(groups: np.ndarray, weight: np.ndarray, intents: int) -> tuple[np.ndarray, ...]:
    """Return (members, group_offsets, member_cum) of the item-intent memberships."""
    n, k = groups.shape
    flat_group = groups.reshape(-1)  # (n * k,)
    flat_item = np.repeat(np.arange(n), k)
    order = np.lexsort((flat_item, flat_group))
    members, member_group = flat_item[order], flat_group[order]
    offsets = np.concatenate([[0], np.cumsum(np.bincount(member_group, minlength=intents))]).astype(np.int64)
    w = weight[members]
    cum = np.cumsum(w)
    starts = np.concatenate([[0.0], cum])[offsets[member_group]]
    totals = (cum[offsets[1:] - 1] - np.concatenate([[0.0], cum])[offsets[:-1]])[member_group]
    return members, offsets, member_group + (cum - starts) / totals


def build_domain(cfg: GeneratorConfig, domain: str, rng: np.random.Generator) -> DomainCatalogue:
    """Return a domain's items: ids, Zipf weights, two intents each (every intent non-empty)."""
    n = max(cfg.intents, round(domain_events(cfg, domain) / cfg.events_per_item))
    numbers = sparse_ids(rng, n, base=1_000 * (1 + DOMAIN_CODES[domain]))
    weight = zipf_weights(rng, n, cfg.zipf_exponent)
    first = rng.integers(0, cfg.intents, n)
    first[: cfg.intents] = np.arange(cfg.intents)  # every intent has members
    groups = first[:, None]
    if cfg.intents > 1:
        second = (first + 1 + rng.integers(0, cfg.intents - 1, n)) % cfg.intents
        groups = np.stack([first, second], axis=1)  # (n, 2)
    members, offsets, member_cum = intent_csr(groups, weight, cfg.intents)
    intent_w = zipf_weights(rng, cfg.intents, 0.7)
    intent_cum = np.cumsum(intent_w) / intent_w.sum()
    ids = prefixed_strings(ITEM_PREFIX[domain], numbers)
    return DomainCatalogue(domain, ids, numbers, weight, groups, members, offsets, member_cum, intent_cum)


def build_catalogue(cfg: GeneratorConfig) -> Catalogue:
    """Return the users, brands and items of a run, sized from ``cfg.events``."""
    rng = rng_for(cfg.seed, STREAM_CATALOGUE)
    n_users = max(10, round(USER_POOL * cfg.events / cfg.events_per_user))
    activity = rng.lognormal(0.0, USER_ACTIVITY_SIGMA, n_users)
    domains = {d: build_domain(cfg, d, rng_for(cfg.seed, STREAM_CATALOGUE, 1 + DOMAIN_CODES[d])) for d in cfg.domains}
    n_brands = max(10, round(sum(d.size for d in domains.values()) / cfg.items_per_brand))
    brand_w = zipf_weights(rng, n_brands, 1.0)
    return Catalogue(
        user_ids=sparse_ids(rng, n_users, base=1_000_000).astype(np.uint64),
        user_cum=np.cumsum(activity) / activity.sum(),
        user_os=rng.choice(len(OS_NAMES), n_users, p=OS_SHARES).astype(np.int8),
        user_intent=rng.integers(0, cfg.intents, n_users),
        brand_ids=sparse_ids(rng, n_brands, base=100).astype(np.uint64),
        brand_cum=np.cumsum(brand_w) / brand_w.sum(),
        domains=domains,
    )


def search_sorted(cum: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Return ``searchsorted(cum, keys, 'right')``, sorting large queries first (several times faster)."""
    if len(cum) <= 64:
        return np.searchsorted(cum, keys, side="right")
    order = np.argsort(keys)
    out = np.empty(len(keys), dtype=np.int64)
    out[order] = np.searchsorted(cum, keys[order], side="right")
    return out


def sample_cum(rng: np.random.Generator, cum: np.ndarray, n: int) -> np.ndarray:
    """Return n indices drawn with probabilities given by a cumulative share array."""
    return np.minimum(search_sorted(cum, rng.random(n)), len(cum) - 1)


def embedding_array(values: np.ndarray, lengths: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    """Return list<float> rows: the first ``lengths[i]`` values of row i; null where not ``valid``."""
    keep = np.arange(values.shape[1])[None, :] < lengths[:, None]  # (n, dim)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    mask = None if valid is None else pa.array(~valid)
    flat = pa.array(values[keep].astype(np.float32, copy=False))
    return pa.ListArray.from_arrays(pa.array(offsets), flat, type=EMBEDDING, mask=mask)


def ragged_lengths(rng: np.random.Generator, n: int, dim: int, ragged: bool) -> np.ndarray:
    """Return embedding lengths (n,): ``dim``, or (ragged) 60% full, 30% shorter, 10% empty."""
    if not ragged:
        return np.full(n, dim, dtype=np.int64)
    kind = rng.random(n)
    short = rng.integers(1, max(dim, 2), n)
    return np.where(kind < 0.6, dim, np.where(kind < 0.9, short, 0)).astype(np.int64)


def users_table(cfg: GeneratorConfig, cat: Catalogue) -> tuple[pa.Table, dict[str, int]]:
    """Return users.pq (socdem/region codes with documented nulls) and injected defect counts."""
    rng = rng_for(cfg.seed, STREAM_CATALOGUE, 10)
    n = len(cat.user_ids)
    no_socdem = defect_mask(rng, n, cfg.defects.users_missing_socdem, stochastic=False)
    no_region = defect_mask(rng, n, cfg.defects.users_missing_region, stochastic=False)
    table = pa.table(
        {
            C.USER: pa.array(cat.user_ids, pa.uint64()),
            "socdem_cluster": pa.array(rng.integers(0, SOCDEM_CODES, n), pa.int64(), mask=no_socdem),
            "region": pa.array(rng.integers(0, REGION_CODES, n), pa.int64(), mask=no_region),
        },
        schema=TECD_SCHEMAS["users"],
    )
    return table, {"users_missing_socdem": int(no_socdem.sum()), "users_missing_region": int(no_region.sum())}


def duplicate_brand_rows(rng: np.random.Generator, n: int, rate: float) -> np.ndarray:
    """Return row indices (n + dups,) where one brand repeats up to 6 extra times, others once."""
    dups = min(round(rate * n / (1 - rate)) if rate < 1 else n, 6 + (n - 1))  # share of all rows
    hot = rng.integers(0, n)
    others = rng.choice(np.delete(np.arange(n), hot), max(0, dups - 6), replace=False) if dups > 6 else []
    extra = np.concatenate([np.full(min(dups, 6), hot), np.asarray(others, dtype=np.int64)])
    return np.sort(np.concatenate([np.arange(n), extra]), kind="stable").astype(np.int64)


def brands_table(cfg: GeneratorConfig, cat: Catalogue) -> tuple[pa.Table, dict[str, int]]:
    """Return brands.pq (duplicated ids, mostly missing and ragged embeddings) and defect counts."""
    rng = rng_for(cfg.seed, STREAM_CATALOGUE, 11)
    rows = duplicate_brand_rows(rng, len(cat.brand_ids), cfg.defects.brands_duplicated)
    dim = cfg.brand_embedding_dim
    lengths = ragged_lengths(rng, len(rows), dim, cfg.defects.ragged_embeddings)
    present = ~defect_mask(rng, len(rows), cfg.defects.brands_missing_embedding, stochastic=False)
    values = rng.standard_normal((len(rows), dim), dtype=np.float32)  # (R, dim)
    table = pa.table(
        {"brand_id": pa.array(cat.brand_ids[rows], pa.uint64()), "embedding": embedding_array(values, lengths, present)},
        schema=TECD_SCHEMAS["brands"],
    )
    ragged = int((present & (lengths != dim)).sum())
    return table, {"brands_duplicated": len(rows) - len(cat.brand_ids), "brands_ragged_embedding": ragged}


def item_chunks(cfg: GeneratorConfig, dom: DomainCatalogue, cat: Catalogue) -> Iterator[tuple[pa.Table, dict[str, int]]]:
    """Yield items.pq in row chunks (embeddings near their intents' centroids) with defect counts."""
    rng = rng_for(cfg.seed, STREAM_CATALOGUE, 20 + DOMAIN_CODES[dom.domain])
    dim, d = cfg.item_embedding_dim, cfg.defects
    centroids = rng.standard_normal((cfg.intents, dim), dtype=np.float32)  # (G, dim)
    price_mu = rng.uniform(-3, 3, cfg.intents)
    rate_cat = {"retail": d.retail_items_missing_category, "marketplace": d.marketplace_items_missing_category}
    rate_sub = {"marketplace": d.marketplace_items_missing_subcategory}
    rate_price = {"retail": d.retail_items_missing_price, "marketplace": d.marketplace_items_missing_price}
    rates = {
        "category": rate_cat.get(dom.domain, 0.0),
        "subcategory": rate_sub.get(dom.domain, 0.0),
        "price": rate_price.get(dom.domain, 0.0),
        "brand": d.items_missing_brand,
    }
    for start in range(0, dom.size, EMBED_CHUNK):
        sl = slice(start, min(dom.size, start + EMBED_CHUNK))
        n, g = sl.stop - sl.start, dom.groups[sl]
        masks = {k: defect_mask(rng, n, rate, stochastic=False) for k, rate in rates.items()}
        emb = centroids[g[:, 0]] + 0.5 * centroids[g[:, -1]] + 0.5 * rng.standard_normal((n, dim), dtype=np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)  # (n, dim) unit rows
        sub = g[:, 0] * 10 + rng.integers(0, 10, n)
        cols = {
            C.ITEM: dom.ids[sl],
            "brand_id": pa.array(cat.brand_ids[sample_cum(rng, cat.brand_cum, n)], pa.uint64(), mask=masks["brand"]),
            "category": nullify(prefixed_strings("c", g[:, 0]), masks["category"]),
            "subcategory": nullify(prefixed_strings("s", sub), masks["subcategory"]),
            "price": pa.array(np.clip(rng.normal(price_mu[g[:, 0]], 1.5), -10, 10), pa.float64(), mask=masks["price"]),
            "embedding": embedding_array(emb, np.full(n, dim, dtype=np.int64)),
        }
        counts = {f"{dom.domain}_items_missing_{k}": int(m.sum()) for k, m in masks.items()}
        yield pa.table(cols, schema=TECD_SCHEMAS["items"]), counts


def nullify(values: pa.Array, mask: np.ndarray) -> pa.Array:
    """Return ``values`` with nulls where ``mask`` is True."""
    return pc.if_else(pa.array(mask), pa.nulls(len(values), values.type), values)


def item_groups_table(cat: Catalogue) -> pa.Table:
    """Return the ground truth (item_id, domain, group): one row per item and latent intent."""
    parts = []
    for dom in cat.domains.values():
        n, k = dom.groups.shape
        parts.append(
            pa.table(
                {
                    C.ITEM: dom.ids.take(pa.array(np.repeat(np.arange(n), k))),
                    C.DOMAIN: pa.array([dom.domain] * (n * k), STRING),
                    "group": pa.array(dom.groups.reshape(-1), pa.int64()),
                },
                schema=TECD_SCHEMAS["item_groups"],
            )
        )
    return pa.concat_tables(parts)

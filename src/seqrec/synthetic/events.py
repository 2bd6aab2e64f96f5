"""Synthetic T-ECD events of one domain and day: sessions with a latent intent, vectorised.

A session has a user, a start time and one latent intent. Its first item is drawn from the
intent (popularity inside it); each later step either draws again from the intent, moves to
the intent's successor of the previous item, or repeats it. The last item alone is ambiguous
(it belongs to two intents, and its successor differs per intent); the history is not.

Sessions that start in the last ``LATE_WINDOW`` of a day may run past midnight. Each day's
sessions are split into an early and a late block with their own random streams, and no
session lasts longer than the window, so day d's file is day d's sessions before midnight plus
day d-1's late block, regenerated from d-1's stream, after midnight: deterministic per day
whatever order or process the days are written in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from seqrec import columns as C
from seqrec.config import GeneratorConfig
from seqrec.synthetic.catalogue import (
    DOMAIN_CODES,
    OS_NAMES,
    STREAM_EVENTS,
    Catalogue,
    DomainCatalogue,
    domain_events,
    exact_count,
    rng_for,
    sample_cum,
    search_sorted,
)
from seqrec.synthetic.schemas import STRING, TECD_SCHEMAS

HOUR = 3_600 * C.MICROS_PER_SECOND
LATE_WINDOW = 2 * HOUR  # sessions starting later may cross midnight; no session lasts longer
# Session starts by hour of day, percent: the real marketplace day 1302.
HOURLY = np.array([2.8, 2.9, 3.1, 3.4, 3.7, 4.1, 4.5, 4.9, 5.2, 5.4, 5.5, 5.7,
                   5.6, 5.4, 5.2, 5.0, 4.6, 4.3, 3.9, 3.5, 3.1, 2.8, 2.7, 2.6])  # fmt: skip
GAP_SHAPE = 1.2  # log-logistic shape of in-session gaps (heavy tail, truncated below 30 minutes)
GAP_CAP_SECONDS = 29 * 60.0
MAX_SESSION_LENGTH = 1_000
DRAW, SUCCESSOR, REPEAT, REVISIT = 0, 1, 2, 3  # session steps
LENGTH_SIGMA = 1.2  # lognormal session lengths: median 2 at mean 4 (real: 80% single events)
ACTIONS = {
    "marketplace": ("view", "click", "clickout", "like"),
    "retail": ("view", "click", "added_to_cart", "order"),
    "offers": ("view", "click"),
}
SUBDOMAINS = {
    "marketplace": (("u2i", "catalog", "i2i", "other", "search"), (0.41, 0.16, 0.14, 0.16, 0.13)),
    "retail": (("catalog", "search", "other", "main", "i2i"), (0.35, 0.25, 0.15, 0.15, 0.10)),
}


@dataclass(frozen=True)
class Sessions:
    """A block of sessions: start (µs), length, user index and intent, one entry per session."""

    start: np.ndarray  # (S,) int64
    length: np.ndarray  # (S,) int64
    user: np.ndarray  # (S,) int64
    intent: np.ndarray  # (S,) int64

    def select(self, mask: np.ndarray) -> "Sessions":
        """Return the sessions where ``mask`` is True."""
        return Sessions(self.start[mask], self.length[mask], self.user[mask], self.intent[mask])


def action_shares(cfg: GeneratorConfig, domain: str) -> np.ndarray:
    """Return the action-type shares of a domain, in ``ACTIONS[domain]`` order."""
    if domain == "marketplace":  # real days: click 2.2-4.3%, clickout 0.5-0.7%, like 0.04-0.06%
        return np.array([1 - 0.025 - 0.0046 - cfg.like_share, 0.025, 0.0046, cfg.like_share])
    return np.array({"retail": [0.80, 0.10, 0.07, 0.03], "offers": [0.9, 0.1]}[domain])


def session_lengths(rng: np.random.Generator, n: int, mean: float) -> np.ndarray:
    """Return n session lengths >= 1: 1 + floor(lognormal), heavy-tailed, with the given mean."""
    mu = np.log(max(mean - 0.5, 0.05)) - LENGTH_SIGMA**2 / 2  # E[floor X] ~ E[X] - 1/2
    return np.minimum(1 + np.floor(rng.lognormal(mu, LENGTH_SIGMA, n)), MAX_SESSION_LENGTH).astype(np.int64)


def day_sessions(cfg: GeneratorConfig, cat: Catalogue, dom: DomainCatalogue, day: int) -> Sessions:
    """Return every session that starts on ``day`` in a domain, ordered by start."""
    rng = rng_for(cfg.seed, STREAM_EVENTS, DOMAIN_CODES[dom.domain], day, 0)
    per_day = domain_events(cfg, dom.domain) / cfg.days / cfg.session_length_mean
    n = exact_count(rng, 1, per_day)
    hour = sample_cum(rng, np.cumsum(HOURLY) / HOURLY.sum(), n)
    start = np.sort(day * C.MICROS_PER_DAY + hour * HOUR + (rng.random(n) * HOUR).astype(np.int64))
    user = sample_cum(rng, cat.user_cum, n)
    favourite = (cat.user_intent[user] + DOMAIN_CODES[dom.domain]) % len(dom.intent_cum)
    intent = np.where(rng.random(n) < cfg.p_user_intent, favourite, sample_cum(rng, dom.intent_cum, n))
    return Sessions(start, session_lengths(rng, n, cfg.session_length_mean), user, intent)


def step_kinds(cfg: GeneratorConfig, n: int, first: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Return each event's step (E,): DRAW, SUCCESSOR, REPEAT or REVISIT; sessions open with a draw."""
    u = rng.random(n)
    edges = np.cumsum([cfg.p_successor, cfg.p_repeat, cfg.p_revisit])
    kind = np.select([u < edges[0], u < edges[1], u < edges[2]], [SUCCESSOR, REPEAT, REVISIT], DRAW)
    kind[first] = DRAW
    return kind


def session_items(cfg: GeneratorConfig, dom: DomainCatalogue, intent: np.ndarray, session_start: np.ndarray,
                  rng: np.random.Generator) -> np.ndarray:  # fmt: skip
    """Return item indices (E,) for events with their session's intent (E,) and first event (E,).

    The intent's cycle gives a path: a draw jumps to a popular member, a successor step moves
    one member on, a repeat or a revisit stays. A revisit then shows a random earlier item of
    the session instead, and the path resumes where it was: only the history tells where.
    """
    n, index = len(intent), np.arange(len(intent))
    kind = step_kinds(cfg, n, session_start == index, rng)
    draws = np.flatnonzero(kind == DRAW)
    pos = search_sorted(dom.member_cum, intent[draws] + rng.random(len(draws)))
    lo, hi = dom.group_offsets[intent], dom.group_offsets[intent + 1]  # (E,) intent's member range
    member = np.zeros(n, dtype=np.int64)
    member[draws] = np.minimum(pos, hi[draws] - 1)
    anchor = np.maximum.accumulate(np.where(kind == DRAW, index, 0))  # last draw at or before
    steps = np.cumsum(kind == SUCCESSOR)
    steps = steps - steps[anchor]  # successor moves since that draw
    path = dom.members[lo + (member[anchor] - lo + steps) % (hi - lo)]
    source = np.where(kind == REVISIT, session_start + (rng.random(n) * (index - session_start)).astype(np.int64), index)
    while np.any(kind[source] == REVISIT):  # a revisit of a revisit: follow back to a path item
        source = np.where(kind[source] == REVISIT, source[source], source)
    return path[source]


def session_offsets(cfg: GeneratorConfig, length: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Return each event's time since its session start (E,) µs: truncated log-logistic gaps."""
    n, starts = int(length.sum()), np.cumsum(length) - length
    ratio_cap = (GAP_CAP_SECONDS / cfg.gap_median_seconds) ** GAP_SHAPE
    u = rng.random(n) * ratio_cap / (1 + ratio_cap)  # inverse CDF restricted below the cap
    gap = cfg.gap_median_seconds * (u / (1 - u)) ** (1 / GAP_SHAPE) * C.MICROS_PER_SECOND
    gap[starts] = 0
    total = np.cumsum(gap)
    within = total - np.repeat(total[starts], length)  # (E,)
    span = np.repeat(within[np.cumsum(length) - 1], length)
    squeeze = np.minimum(1.0, (LATE_WINDOW - C.MICROS_PER_SECOND) / np.maximum(span, 1.0))
    return (within * squeeze).astype(np.int64)  # no session lasts longer than LATE_WINDOW


def block_events(cfg: GeneratorConfig, cat: Catalogue, dom: DomainCatalogue, s: Sessions,
                 rng: np.random.Generator) -> dict[str, np.ndarray]:  # fmt: skip
    """Return the events of a block of sessions as arrays (time, user, item, action, subdomain)."""
    session = np.repeat(np.arange(len(s.start)), s.length)  # (E,)
    session_start = np.repeat(np.cumsum(s.length) - s.length, s.length)  # (E,) index of its first event
    item = session_items(cfg, dom, s.intent[session], session_start, rng)
    time = s.start[session] + session_offsets(cfg, s.length, rng)
    action = sample_cum(rng, np.cumsum(action_shares(cfg, dom.domain)), len(session))
    names, shares = SUBDOMAINS.get(dom.domain, ((), ()))
    sub = sample_cum(rng, np.cumsum(shares), len(session)) if names else np.full(len(session), -1)
    if dom.domain == "retail":
        sub[action == ACTIONS["retail"].index("order")] = names.index("other")
    if dom.domain == "marketplace":
        sub[missing_subdomain(cfg, action == ACTIONS["marketplace"].index("like"), rng)] = -1
    return {"time": time, "user": s.user[session], "item": item, "action": action, "sub": sub}


def missing_subdomain(cfg: GeneratorConfig, like: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Return where subdomain is null: on likes (the real pattern), at the configured event share."""
    rate, share = cfg.defects.marketplace_events_missing_subdomain, cfg.like_share
    u = rng.random(len(like))
    on_likes = u < (min(1.0, rate / share) if share > 0 else 0.0)
    on_others = u < (max(0.0, rate - share) / (1 - share))  # only when the rate exceeds the likes
    return np.where(like, on_likes, on_others)


def concat_events(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Return the parts' events concatenated and stably sorted by time."""
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.argsort(merged["time"], kind="stable")
    return {k: v[order] for k, v in merged.items()}


def keep(events: dict[str, np.ndarray], lo: int, hi: int) -> dict[str, np.ndarray]:
    """Return the events with lo <= time < hi."""
    mask = (events["time"] >= lo) & (events["time"] < hi)
    return {k: v[mask] for k, v in events.items()}


def day_events(cfg: GeneratorConfig, cat: Catalogue, dom: DomainCatalogue, day: int) -> tuple[pa.Table, dict]:
    """Return a domain's events file for ``day`` (sorted by time) and its counts."""
    lo, hi = day * C.MICROS_PER_DAY, (day + 1) * C.MICROS_PER_DAY
    code = DOMAIN_CODES[dom.domain]
    today, yesterday = day_sessions(cfg, cat, dom, day), day_sessions(cfg, cat, dom, day - 1)
    late_today = today.start >= hi - LATE_WINDOW
    parts = [
        block_events(cfg, cat, dom, today.select(~late_today), rng_for(cfg.seed, STREAM_EVENTS, code, day, 1)),
        block_events(cfg, cat, dom, today.select(late_today), rng_for(cfg.seed, STREAM_EVENTS, code, day, 2)),
    ]
    late_yesterday = yesterday.select(yesterday.start >= lo - LATE_WINDOW)
    spill = block_events(cfg, cat, dom, late_yesterday, rng_for(cfg.seed, STREAM_EVENTS, code, day - 1, 2))
    events = keep(concat_events(parts + [spill]), lo, hi)
    counts = {
        f"events.{dom.domain}": len(events["time"]),
        f"events.{dom.domain}.after_midnight": int(((spill["time"] >= lo) & (spill["time"] < hi)).sum()),
        f"{dom.domain}_events_missing_subdomain": int((events["sub"] < 0).sum()) if dom.domain in SUBDOMAINS else 0,
    }
    return events_table(cat, dom, events), counts


def events_table(cat: Catalogue, dom: DomainCatalogue, ev: dict[str, np.ndarray]) -> pa.Table:
    """Return the Arrow table of events in the exact real schema (strings taken from small dictionaries)."""
    names, _ = SUBDOMAINS.get(dom.domain, ((), ()))
    sub = pa.array(np.maximum(ev["sub"], 0), pa.int64(), mask=ev["sub"] < 0)
    os_codes = cat.user_os[ev["user"]].astype(np.int64)
    cols = [
        pa.array(ev["time"], pa.int64()).cast(pa.duration("us")),
        pa.array(cat.user_ids[ev["user"]], pa.uint64()),
        dom.ids.take(pa.array(ev["item"], pa.int64())),
        pa.array(names or [""], STRING).take(sub) if names else pa.nulls(len(sub), STRING),
        pa.array(ACTIONS[dom.domain], STRING).take(pa.array(ev["action"], pa.int64())),
        pa.array(OS_NAMES, STRING).take(pa.array(os_codes)) if dom.domain != "offers" else pa.nulls(len(sub), STRING),
    ]
    return pa.Table.from_arrays(cols, schema=TECD_SCHEMAS["events"])

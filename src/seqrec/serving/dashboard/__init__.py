"""A live recommendation dashboard: replay a test set as an event stream, watch rolling metrics.

``replay`` is plain library code (no web framework); ``app`` serves it with Starlette/uvicorn.
"""

from seqrec.serving.dashboard.replay import Replay, ReplayRunner, order_events, rank_in_list, replay_all

__all__ = ["Replay", "ReplayRunner", "order_events", "rank_in_list", "replay_all"]

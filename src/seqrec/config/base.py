"""The base of every config section, and the config error."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Base of every config section: frozen, and unknown keys are an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class ConfigError(ValueError):
    """A configuration key or value is invalid; the message names both."""

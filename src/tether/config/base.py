"""The base of every table model: frozen, and no key it does not know."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["Strict"]


class Strict(BaseModel):
    """A tether.toml table: immutable once read; an unknown key is an error (with a "did you mean")."""

    model_config = ConfigDict(frozen=True, extra="forbid")

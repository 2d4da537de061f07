"""The ``[payments]`` section of the relay's Settings."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class PaymentSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False

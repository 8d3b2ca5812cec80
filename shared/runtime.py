"""Process start-up for every host of the product (Functions host, CLI): settings, logging, telemetry, once."""

from __future__ import annotations

import functools

from shared import logs, telemetry
from shared.settings import Settings


@functools.cache
def settings() -> Settings:
    """Read and validate app settings once per process, then switch on logging and telemetry."""
    loaded = Settings.from_env()
    telemetry.configure(loaded)  # first: the Azure Monitor log handler must get the redactor too
    logs.configure_logging(loaded.log_level)
    return loaded

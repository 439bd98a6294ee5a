"""Read a stage driver's Prometheus endpoint (docs/contracts.md §4) for the job's status.

    values, error = await scrape("10.1.2.3", 9400, timeout=2.0)
    # ({"llmtrain_train_step": 120.0, ...}, None), or (None, "connection refused")

Only `llmtrain_*` samples are kept; a counter's `_total` sample keeps its full name. A
driver that is not up yet, or any network error, yields no values and the reason: the state
machine, not this module, decides what a silent driver means (ProgressUnknown, not a stall).
"""

from __future__ import annotations

import logging

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger(__name__)


def parse_metrics(text: str) -> dict[str, float]:
    """`llmtrain_*` sample values by name; the first sample wins when labels differ."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("llmtrain_") and not sample.name.endswith("_created"):
                out.setdefault(sample.name, float(sample.value))
    return out


async def scrape(
    host: str, port: int, timeout: float = 2.0
) -> tuple[dict[str, float] | None, str | None]:
    url = f"http://{host}:{port}/metrics"
    try:
        client_timeout = aiohttp.ClientTimeout(total=timeout)
        async with (
            aiohttp.ClientSession(timeout=client_timeout, trust_env=False) as session,
            session.get(url) as rsp,
        ):
            if rsp.status != 200:
                return None, f"GET {url}: HTTP {rsp.status}"
            text = await rsp.text()
    except TimeoutError:
        return None, f"GET {url}: no answer within {timeout:g}s"
    except (aiohttp.ClientError, OSError) as e:
        log.debug("scrape %s failed: %s", url, e)
        return None, f"GET {url}: {e}"
    try:
        return parse_metrics(text), None
    except ValueError as e:
        log.warning("scrape %s: unparsable metrics: %s", url, e)
        return None, f"GET {url}: unparsable metrics: {e}"

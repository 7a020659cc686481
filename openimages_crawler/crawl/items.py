"""What the spider hands the pipeline for each image request (never exported)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from scrapy.http import Response
from twisted.python.failure import Failure

from openimages_crawler.checkpoint.planner import RowPlan

# The request meta key that carries a row's plan to the pipeline.
PLAN_KEY = "openimages_plan"


@dataclass(slots=True)
class FetchedImage:
    """A request's outcome on its way to the pipeline: the row's plan and the
    response or the failure."""

    plan: RowPlan
    response: Response | None = None
    failure: Failure | None = None


# Unrecorded.why of a row whose outputs were rebuilt: it has its results row already.
ALREADY_RECORDED = "already recorded; outputs rebuilt"


@dataclass(slots=True)
class Unrecorded:
    """A row that ends this run without a result line (interrupted, repaired,
    or retried from the network); no feed accepts it."""

    image_id: str
    why: str


def request_meta(plan: RowPlan) -> dict[str, Any]:
    """The meta of an image request: its plan, and every status handed to the pipeline."""
    return {PLAN_KEY: plan, "dont_redirect": True, "handle_httpstatus_all": True}

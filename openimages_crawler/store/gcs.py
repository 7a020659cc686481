"""``gs://bucket/prefix``: Google Cloud Storage through its S3-compatible XML
API, an ``ObjectStore`` whose conditional writes speak GCS's generation
preconditions (its leases depend on them)."""

from __future__ import annotations

from typing import Any

from openimages_crawler.store.objects import ObjectStore

GCS_ENDPOINT = "https://storage.googleapis.com"


class GcsStore(ObjectStore):
    """``gs://bucket/prefix`` through GCS's S3-compatible endpoint, with an HMAC
    key pair in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY."""

    default_endpoint = GCS_ENDPOINT

    def _new_client(self, attempts: int) -> Any:
        client = super()._new_client(attempts)
        for operation in ("PutObject", "DeleteObject"):
            client.meta.events.register(f"before-call.s3.{operation}", generation_preconditions)
        return client

    def _version(self, response: dict[str, Any]) -> str:
        """The object's generation: GCS's write preconditions name it, not the ETag."""
        generation = response["ResponseMetadata"]["HTTPHeaders"].get("x-goog-generation")
        if generation is None:
            raise OSError(f"{self.uri}: the server at {self.client.meta.endpoint_url} does not answer as Google "
                          "Cloud Storage (no x-goog-generation); use s3:// for other S3-compatible servers")
        return str(generation)


def generation_preconditions(params: dict[str, Any], **_: Any) -> None:
    """S3's conditional headers of a write as GCS's own preconditions (a
    ``before-call`` handler): its XML API honours ``If-None-Match`` and
    ``If-Match`` on reads only, and ``x-goog-if-generation-match`` on writes
    (``0``: only if there is no live object)."""
    headers = params["headers"]
    if headers.pop("If-None-Match", None) is not None:  # always "*": create if absent
        headers["x-goog-if-generation-match"] = "0"
    generation = headers.pop("If-Match", None)
    if generation is not None:
        headers["x-goog-if-generation-match"] = generation

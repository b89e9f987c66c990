"""The S3 server the shared tier's tests run against comes up on loopback."""

from __future__ import annotations

import httpx

from tests.rgw import Radosgw


def test_the_gateway_answers_s3_on_loopback(rgw: Radosgw) -> None:
    response = httpx.get(rgw.endpoint, timeout=10)
    assert response.status_code == 200
    assert b"ListAllMyBucketsResult" in response.content
    assert rgw.endpoint.startswith("http://127.0.0.1:")

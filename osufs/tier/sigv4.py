"""botocore's SigV4 signing and credential chain, for osufs/tier/s3.py: a module of its own so
that botocore is imported only when S3 is used. Any thread may call these."""

from __future__ import annotations

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import (
    CredentialResolver,
    Credentials,
    EnvProvider,
    SharedCredentialProvider,
)


class _Signer(S3SigV4Auth):
    """botocore's S3 SigV4, taking a body's SHA-256 given in the request's context instead of
    reading the body for it."""

    def payload(self, request: AWSRequest) -> str:
        return request.context.get("payload_sha256") or super().payload(request)


def resolve_credentials(
    files: list[str], profile: str, *, environment: bool
) -> Credentials | None:
    """The first credentials found: in the environment (if asked), then in these files."""
    providers = [EnvProvider()] if environment else []
    providers += [SharedCredentialProvider(path, profile) for path in files]
    return CredentialResolver(providers).load_credentials()


def sign(
    credentials: Credentials,
    region: str,
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes,
    payload_sha256: str | None,
) -> dict[str, str]:
    """The headers of a request signed for S3 in region."""
    request = AWSRequest(method=method, url=url, data=body, headers=headers)
    if payload_sha256 is not None:
        request.context["payload_sha256"] = payload_sha256
    _Signer(credentials.get_frozen_credentials(), "s3", region).add_auth(request)
    return dict(request.headers.items())

"""Loopback store servers for the end-to-end tests: started on first use, one per protocol for the whole
session, stopped at its end (see loopback_stores.py)."""

from __future__ import annotations

import os

import pytest

from loopback_stores import BUCKET, LoopbackStore, start_store, use_store

# No cloud metadata service is ever asked, by this process or the CLI processes it starts: when no
# credentials are set, botocore and google-auth look for one at a link-local address, off this machine.
# Both libraries read these once, so they are set before any test imports them.
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
os.environ.setdefault("NO_GCE_CHECK", "true")


@pytest.fixture(scope="session")
def loopback_stores(tmp_path_factory):
    """``get(scheme)``: the session's running server for ``s3``, ``gs`` or ``az``, with a bucket
    :data:`BUCKET`; the test is skipped, saying what to install, when the server's binary is absent."""
    started: dict[str, LoopbackStore] = {}

    def get(scheme: str) -> LoopbackStore:
        if scheme not in started:
            try:
                store = start_store(scheme, tmp_path_factory.mktemp(f"{scheme}-server"))
            except LookupError as exc:
                pytest.skip(str(exc))
            store.make_bucket(BUCKET)
            started[scheme] = store
        return started[scheme]

    yield get
    for store in started.values():
        store.stop()


@pytest.fixture(params=["s3", "gs", "az"])
def any_store(request, loopback_stores, monkeypatch) -> LoopbackStore:
    """Each loopback store in turn, reached through its standard variables only."""
    return use_store(loopback_stores(request.param), monkeypatch)

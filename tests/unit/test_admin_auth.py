"""Admin API tokens: parsing, constant-time identification, the loopback rule, and the OpenAPI document."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import pytest

from pgtenantproxy.admin.api import AdminContext, build_app
from pgtenantproxy.admin.auth import AdminConfigError, TokenSet, check_exposure, load_tokens
from pgtenantproxy.admin.openapi import document, render
from pgtenantproxy.config import AdminSection, Config

A = "a" * 20
B = "b-very-secret-token-2"


def test_a_single_token_and_named_tokens() -> None:
    single = TokenSet.parse(A)
    assert single.required and single.tokens[0].name.startswith("token-")
    assert single.identify(f"Bearer {A}") == single.tokens[0].name
    named = TokenSet.parse(f"alice:{A}, bob:{B}")
    assert named.identify(f"Bearer {A}") == "alice"
    assert named.identify(f"Bearer {B}") == "bob"
    for wrong in (None, "", A, f"Basic {A}", f"Bearer {A}x", f"Bearer {A[:-1]}", "Bearer "):
        assert named.identify(wrong) is None, wrong
    assert A not in repr(named) and B not in repr(named)


def test_short_tokens_and_empty_values() -> None:
    with pytest.raises(AdminConfigError, match="at least 16 characters"):
        TokenSet.parse("alice:short")
    assert not TokenSet.parse("   ").required
    assert not load_tokens(AdminSection(token_env="X_TOKEN"), {}).required
    assert load_tokens(AdminSection(token_env="X_TOKEN"), {"X_TOKEN": A}).required


@pytest.mark.parametrize(
    ("listen", "token", "refused"),
    [
        ("127.0.0.1:9188", "", False),
        ("[::1]:9188", "", False),
        ("localhost:9188", "", False),
        ("0.0.0.0:9188", "", True),
        ("10.1.2.3:9188", "", True),
        ("0.0.0.0:9188", A, False),
    ],
)
def test_an_open_api_only_on_loopback(listen: str, token: str, refused: bool) -> None:
    section = AdminSection(listen=listen, token_env="X_TOKEN")
    tokens = load_tokens(section, {"X_TOKEN": token})
    if refused:
        with pytest.raises(AdminConfigError, match="not a loopback address"):
            check_exposure(section, tokens)
    else:
        check_exposure(section, tokens)


def test_every_route_is_documented_and_the_stored_document_is_current() -> None:
    ctx = AdminContext(lambda: Config(), cast(Any, None), None, None, TokenSet())
    app = build_app(ctx)
    documented = {(path, method.upper()) for path, ops in document()["paths"].items() for method in ops}
    routes = {(r.resource.canonical, r.method) for r in app.router.routes()
              if r.method != "HEAD" and r.resource is not None}
    assert routes == documented
    stored = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
    assert json.loads(stored.read_text()) == json.loads(render()), (
        "docs/openapi.json is stale: python -m pgtenantproxy.admin.openapi > docs/openapi.json"
    )

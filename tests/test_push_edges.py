"""Web push subscriptions at their edges: what a caller (the CLI's argv, a browser's
JSON, client code) can hand in that is not text or not a subscription is refused naming
the field, never an AttributeError or UnicodeEncodeError."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from crmqueue import push
from crmqueue.cli import main
from crmqueue.errors import PayloadError
from tests.push_service import PushService
from tests.test_push import KEY, _settings


@pytest.fixture
def service() -> Any:
    with PushService(application_server_key=KEY.public_key) as running:
        yield running


@pytest.mark.parametrize("endpoint", [None, 5, "", "https://x/\udcff", "https://x/\x00"])
def test_unsubscribe_refuses_what_no_subscription_can_be(tmp_path: Path, endpoint: Any) -> None:
    with pytest.raises(PayloadError) as caught:
        push.unsubscribe("t1", "u1", endpoint, settings=_settings(tmp_path))
    assert [field for field, _ in caught.value.errors] == ["endpoint"]


def test_cli_unsubscribe_with_an_undecodable_argument_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "crmqueue.toml"
    config.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/crm.db"\n')
    result = CliRunner().invoke(
        main, ["push", "unsubscribe", "--tenant", "t1", "--user", "u1", "https://x/\udcff",
               "--config", str(config)],
    )  # fmt: skip
    assert result.exit_code == 1 and "endpoint" in result.output, result.output
    assert not isinstance(result.exception, UnicodeError)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"expirationTime": "garbage"}, "expirationTime"),
        ({"expirationTime": -1}, "expirationTime"),
        ({"expirationTime": True}, "expirationTime"),
        ({"expirationTime": float("nan")}, "expirationTime"),
    ],
)
def test_subscribe_json_checks_expiration_time(
    tmp_path: Path, service: PushService, changes: dict[str, Any], field: str
) -> None:
    settings = _settings(tmp_path)
    good = service.browser().subscription
    with pytest.raises(PayloadError) as caught:
        push.subscribe_json("t1", "u1", {**good, **changes}, settings=settings)
    assert [name for name, _ in caught.value.errors] == [field]
    assert push.subscriptions("t1", "u1", settings=settings) == []
    # null and a number of milliseconds are what browsers send
    push.subscribe_json("t1", "u1", {**good, "expirationTime": None}, settings=settings)
    push.subscribe_json("t1", "u1", {**good, "expirationTime": 1.7e12}, settings=settings)


def test_a_user_agent_that_is_not_text_is_refused(tmp_path: Path, service: PushService) -> None:
    good = service.browser().subscription
    with pytest.raises(PayloadError) as caught:
        push.subscribe_json("t1", "u1", good, user_agent=5, settings=_settings(tmp_path))  # type: ignore[arg-type]
    assert [name for name, _ in caught.value.errors] == ["user_agent"]

"""Settings: the documented defaults file, the production example, precedence, the
environment conventions, errors that name key paths, and masked secrets."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, SecretStr

from crmqueue.config import QUEUE_NAMES, Settings, load_settings, mask_url
from crmqueue.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS_FILE = ROOT / "config" / "crmqueue.toml"
PRODUCTION_FILE = ROOT / "config" / "examples" / "production.toml"

# A key documented but left commented out: "# api_key = ..." on a line of its own.
COMMENTED_KEY = re.compile(r"^# ?([a-z][a-z0-9_]*) = (.+)$")
KEY_LINE = re.compile(r"^([a-z][a-z0-9_]*) = ")

KeyPath = tuple[str, ...]


@pytest.fixture(autouse=True)
def _no_local_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may pick up a ./crmqueue.toml from wherever pytest was started."""
    monkeypatch.chdir(tmp_path)


def write(tmp_path: Path, text: str, name: str = "crmqueue.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(*args: Any, **kwargs: Any) -> str:
    kwargs.setdefault("environ", {})
    with pytest.raises(ConfigError) as info:
        load_settings(*args, **kwargs)
    return str(info.value)


def model_leaves(model: type[BaseModel], prefix: KeyPath = ()) -> dict[KeyPath, Any]:
    """Every leaf key path of a settings model (by its TOML spelling) and its field."""
    leaves: dict[KeyPath, Any] = {}
    for name, field in model.model_fields.items():
        path = (*prefix, field.alias or name)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            leaves.update(model_leaves(annotation, path))
        else:
            leaves[path] = field
    return leaves


def default_at(path: KeyPath) -> Any:
    node: Any = Settings().model_dump(by_alias=True)
    for key in path:
        node = node[key]
    return node


def toml_leaves(tree: dict[str, Any], prefix: KeyPath = ()) -> set[KeyPath]:
    leaves: set[KeyPath] = set()
    for key, value in tree.items():
        if isinstance(value, dict):
            leaves |= toml_leaves(value, (*prefix, key))
        else:
            leaves.add((*prefix, key))
    return leaves


def uncommented(text: str) -> str:
    """The defaults file with its commented-out keys switched on."""
    return "\n".join(
        COMMENTED_KEY.sub(r"\1 = \2", line) if COMMENTED_KEY.match(line) else line
        for line in text.splitlines()
    )


ALL_KEYS = model_leaves(Settings)
# Keys documented commented out: no default, or an empty list of tables ([[schedules]]),
# which TOML can only spell as tables after the last section.
UNSET_KEYS = {path for path in ALL_KEYS if default_at(path) is None or path == ("schedules",)}
SECRET_KEYS = {path for path, field in ALL_KEYS.items() if "SecretStr" in repr(field.annotation)}


# --- the documented defaults file -------------------------------------------------------


def test_model_walk_sees_the_whole_model() -> None:
    # Guards the walk the drift tests rely on: nested sections, aliases and secrets.
    assert ("queues", "import-export", "workers") in ALL_KEYS
    assert ("email", "smtp", "password") in ALL_KEYS
    assert len([p for p in ALL_KEYS if p[0] == "queues"]) == 5 * 12
    assert {
        ("email", "sendgrid", "api_key"),
        ("email", "ses", "secret_access_key"),
        ("email", "ses", "session_token"),
        ("email", "resend", "api_key"),
        ("email", "mailgun", "api_key"),
        ("email", "smtp", "password"),
        ("push", "vapid_private_key"),
    } == SECRET_KEYS
    assert SECRET_KEYS <= UNSET_KEYS


def test_defaults_file_loads_to_exactly_the_builtin_defaults() -> None:
    assert load_settings(DEFAULTS_FILE, environ={}) == Settings()


def test_defaults_comparison_detects_a_drifted_value(tmp_path: Path) -> None:
    drifted = DEFAULTS_FILE.read_text().replace("workers = 10\n", "workers = 11\n", 1)
    assert drifted != DEFAULTS_FILE.read_text()
    assert load_settings(write(tmp_path, drifted), environ={}) != Settings()


def test_defaults_file_sets_every_key_that_has_a_value() -> None:
    parsed = tomllib.loads(DEFAULTS_FILE.read_text())
    assert toml_leaves(parsed) == set(ALL_KEYS) - UNSET_KEYS


def test_unset_and_secret_keys_are_documented_commented_out_in_their_section(
    tmp_path: Path,
) -> None:
    text = DEFAULTS_FILE.read_text()
    parsed = tomllib.loads(text)
    switched_on = tomllib.loads(uncommented(text))
    assert toml_leaves(switched_on) == set(ALL_KEYS)
    assert toml_leaves(switched_on) - toml_leaves(parsed) == UNSET_KEYS
    for path in SECRET_KEYS:
        assert path not in toml_leaves(parsed), f"secret {'.'.join(path)} is set in the file"
        assert f"# {path[-1]} = " in text
    # The commented-out examples are valid values for their keys.
    # push.vapid_private_key is refused in any file (environment only): not switched on.
    examples = "\n".join(line for line in uncommented(text).splitlines()
                         if not line.startswith("vapid_private_key ="))  # fmt: skip
    settings = load_settings(write(tmp_path, examples), environ={})
    assert isinstance(settings.email.smtp.password, SecretStr)
    assert settings.email.mailgun.domain == "mg.example.com"


def test_every_key_in_the_defaults_file_has_a_comment_line_above_it() -> None:
    lines = DEFAULTS_FILE.read_text().splitlines()
    keys_seen = 0
    for number, line in enumerate(lines):
        if KEY_LINE.match(line) or COMMENTED_KEY.match(line):
            keys_seen += 1
            above = lines[number - 1]
            assert above.startswith("# ") and not COMMENTED_KEY.match(above), (
                f"line {number + 1} ({line!r}) has no comment line above it"
            )
    assert keys_seen == len(ALL_KEYS)


def test_defaults_file_header_documents_env_precedence_and_secrets() -> None:
    text = DEFAULTS_FILE.read_text()
    for name in (
        "REDIS_URL",
        "REDIS_HOST",
        "REDIS_PORT",
        "REDIS_PASSWORD",
        "REDIS_DB",
        "EMAIL_PROVIDER",
        "EMAIL_FROM",
        "SENDGRID_API_KEY",
        "AWS_REGION",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "RESEND_API_KEY",
        "MAILGUN_DOMAIN",
        "MAILGUN_API_KEY",
        "CRMQUEUE_<SECTION>__<KEY>",
        "CRMQUEUE_QUEUES__EMAIL__WORKERS=4",
        "CRMQUEUE_CONFIG",
        "--config",
        "./crmqueue.toml",
    ):
        assert name in text, name
    assert "defaults < this file < environment < flags" in text
    assert "never in a TOML file checked into git" in text


@pytest.mark.parametrize(
    ("queue", "workers", "attempts", "timeout", "priority"),
    [
        ("email", 10, 5, 30, 100),
        ("import-export", 3, 2, 300, 50),
        ("report", 2, 3, 600, 50),
        ("webhook", 5, 10, 30, 50),
        ("notification", 20, 3, 30, 150),
    ],
)
def test_builtin_queue_defaults(
    queue: str, workers: int, attempts: int, timeout: float, priority: int
) -> None:
    spec = Settings().queues.get(queue)
    assert (spec.workers, spec.attempts, spec.timeout_seconds, spec.priority) == (
        workers,
        attempts,
        timeout,
        priority,
    )
    # a webhook receiver may be down for hours: its retries spread over about 4 hours
    backoff = (60.0, 21600.0) if queue == "webhook" else (2.0, 3600.0)
    assert (spec.backoff_seconds, spec.backoff_max_seconds) == backoff
    assert (spec.keep_completed_seconds, spec.keep_failed_seconds) == (3600, 86400)
    assert (spec.lease_seconds, spec.max_stalls) == (30.0, 3)


def test_embedded_default_keeps_everything_under_crmqueue_data() -> None:
    settings = Settings()
    assert settings.storage.url == "sqlite:///crmqueue-data/queues.db"
    assert settings.database.url == "sqlite:///crmqueue-data/crm.db"
    assert settings.files.dir == Path("crmqueue-data/files")
    assert settings.email.outbox_dir == Path("crmqueue-data/outbox")
    assert settings.email.provider == "outbox"


# --- the production example -------------------------------------------------------------


def test_production_example_validates() -> None:
    settings = load_settings(PRODUCTION_FILE, environ={"SENDGRID_API_KEY": "SG.from-env"})
    assert settings.storage.url == "redis://redis.internal:6379/0"
    assert settings.database.url == "postgresql+psycopg://crm@db.internal/crm"
    assert settings.files.dir == Path("/var/lib/crmqueue/files")
    assert settings.email.provider == "sendgrid"
    assert settings.email.sendgrid.api_key is not None
    assert settings.email.sendgrid.api_key.get_secret_value() == "SG.from-env"
    assert settings.logging.format == "json"
    assert settings.queues.email.workers == 16
    assert settings.queues.webhook.attempts == 15
    # Keys the example leaves out keep their defaults.
    assert settings.queues.email.priority == 100
    assert settings.queues.notification.attempts == 3


def test_production_example_holds_no_secrets() -> None:
    parsed = tomllib.loads(PRODUCTION_FILE.read_text())
    assert not SECRET_KEYS & toml_leaves(parsed)
    assert "@" not in parsed["storage"]["url"]
    assert ":" not in parsed["database"]["url"].split("://", 1)[1].split("@", 1)[0]


# --- precedence and file lookup ---------------------------------------------------------


def test_precedence_defaults_file_env_flags(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[queues.email]\nworkers = 4\nattempts = 7\n[logging]\nlevel = "DEBUG"\n',
    )
    env = {"CRMQUEUE_QUEUES__EMAIL__WORKERS": "5", "CRMQUEUE_LOGGING__FORMAT": "json"}

    from_file = load_settings(path, environ={})
    assert from_file.queues.email.workers == 4
    assert from_file.logging.format == "text"

    from_env = load_settings(path, environ=env)
    assert from_env.queues.email.workers == 5
    assert from_env.queues.email.attempts == 7  # file value survives an env sibling
    assert from_env.logging.level == "DEBUG"
    assert from_env.logging.format == "json"

    from_flags = load_settings(path, overrides={"queues.email.workers": 6}, environ=env)
    assert from_flags.queues.email.workers == 6
    assert from_flags.queues.email.attempts == 7
    assert from_flags.queues.email.timeout_seconds == 30  # default survives everything
    assert from_flags.logging.format == "json"


def test_flags_override_env_for_original_names_too() -> None:
    settings = load_settings(
        overrides={"storage.url": "redis://flag:6379/1"},
        environ={"REDIS_URL": "redis://env:6379/0"},
    )
    assert settings.storage.url == "redis://flag:6379/1"


def test_file_lookup_order(tmp_path: Path) -> None:
    explicit = write(tmp_path, "[queues.email]\nworkers = 1\n", "explicit.toml")
    from_env = write(tmp_path, "[queues.email]\nworkers = 2\n", "from-env.toml")
    write(tmp_path, "[queues.email]\nworkers = 3\n")  # ./crmqueue.toml (cwd is tmp_path)
    env = {"CRMQUEUE_CONFIG": str(from_env)}

    assert load_settings(explicit, environ=env).queues.email.workers == 1
    assert load_settings(None, environ=env).queues.email.workers == 2
    assert load_settings(None, environ={}).queues.email.workers == 3


def test_no_file_anywhere_means_builtin_defaults() -> None:
    assert load_settings(None, environ={}) == Settings()


def test_partial_queue_section_keeps_the_other_defaults(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "[queues.email]\nworkers = 4\n"), environ={})
    email = settings.queues.email
    assert email.workers == 4
    assert (email.attempts, email.timeout_seconds, email.priority) == (5, 30, 100)
    assert (email.backoff_seconds, email.backoff_max_seconds, email.max_stalls) == (2, 3600, 3)
    assert settings.queues.report == Settings().queues.report


def test_import_export_accepts_underscore_in_file_env_and_flags(tmp_path: Path) -> None:
    path = write(tmp_path, "[queues.import_export]\nattempts = 4\n")
    settings = load_settings(
        path,
        overrides={"queues.import_export.timeout_seconds": 900},
        environ={"CRMQUEUE_QUEUES__IMPORT_EXPORT__WORKERS": "7"},
    )
    spec = settings.queues.get("import-export")
    assert (spec.attempts, spec.workers, spec.timeout_seconds) == (4, 7, 900)


# --- environment ------------------------------------------------------------------------


def test_crmqueue_env_keys_apply() -> None:
    settings = load_settings(
        environ={
            "CRMQUEUE_QUEUES__EMAIL__WORKERS": "4",
            "CRMQUEUE_QUEUES__IMPORT_EXPORT__WORKERS": "7",
            "CRMQUEUE_STORAGE__CONNECT_TIMEOUT_SECONDS": "1.5",
            "CRMQUEUE_EMAIL__SMTP__PORT": "587",
            "CRMQUEUE_RUNNER__IMPORTS": "myapp.jobs, myapp.more",
            "CRMQUEUE_LOGGING__LEVEL": "debug",
            "CRMQUEUE_CONFIG": "",  # the lookup variable is not a key
        }
    )
    assert settings.queues.email.workers == 4
    assert settings.queues.import_export.workers == 7
    assert settings.queues.email.attempts == 5
    assert settings.storage.connect_timeout_seconds == 1.5
    assert settings.email.smtp.port == 587
    assert settings.runner.imports == ["myapp.jobs", "myapp.more"]
    assert settings.logging.level == "DEBUG"


def test_redis_url_sets_storage_url() -> None:
    settings = load_settings(environ={"REDIS_URL": "redis://cache:6379/3"})
    assert settings.storage.url == "redis://cache:6379/3"


def test_redis_host_port_password_db_build_a_url() -> None:
    settings = load_settings(
        environ={
            "REDIS_HOST": "cache.internal",
            "REDIS_PORT": "6380",
            "REDIS_PASSWORD": "p@ss/word",
            "REDIS_DB": "2",
        }
    )
    assert settings.storage.url == "redis://:p%40ss%2Fword@cache.internal:6380/2"


def test_redis_host_alone_uses_default_port_and_db() -> None:
    settings = load_settings(environ={"REDIS_HOST": "cache.internal"})
    assert settings.storage.url == "redis://cache.internal:6379/0"


def test_redis_url_beats_redis_host_and_crmqueue_name_beats_both() -> None:
    env = {"REDIS_URL": "redis://url:6379/0", "REDIS_HOST": "host"}
    assert load_settings(environ=env).storage.url == "redis://url:6379/0"
    env["CRMQUEUE_STORAGE__URL"] = "rediss://explicit:6379/0"
    assert load_settings(environ=env).storage.url == "rediss://explicit:6379/0"


@pytest.mark.parametrize(
    ("name", "value", "path"),
    [
        ("EMAIL_PROVIDER", "mailgun", ("email", "provider")),
        ("EMAIL_FROM", "Acme <crm@acme.test>", ("email", "from_address")),
        ("SENDGRID_API_KEY", "SG.abc", ("email", "sendgrid", "api_key")),
        ("AWS_REGION", "eu-west-1", ("email", "ses", "region")),
        ("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE", ("email", "ses", "access_key_id")),
        ("AWS_SECRET_ACCESS_KEY", "aws-secret", ("email", "ses", "secret_access_key")),
        ("AWS_SESSION_TOKEN", "aws-token", ("email", "ses", "session_token")),
        ("RESEND_API_KEY", "re_abc", ("email", "resend", "api_key")),
        ("MAILGUN_DOMAIN", "mg.acme.test", ("email", "mailgun", "domain")),
        ("MAILGUN_API_KEY", "key-abc", ("email", "mailgun", "api_key")),
    ],
)
def test_original_env_names_land_in_their_keys(name: str, value: str, path: KeyPath) -> None:
    node: Any = load_settings(environ={name: value})
    for key in path:
        node = getattr(node, key)
    if path in SECRET_KEYS:
        assert isinstance(node, SecretStr)
        node = node.get_secret_value()
    assert node == value
    # Nothing else moved.
    untouched = load_settings(environ={}).model_dump()
    changed = load_settings(environ={name: value}).model_dump()
    for key in path[:-1]:
        untouched, changed = untouched[key], changed[key]
    untouched.pop(path[-1])
    changed.pop(path[-1])
    assert changed == untouched


def test_empty_original_env_names_are_ignored() -> None:
    assert load_settings(environ={"REDIS_URL": "", "EMAIL_PROVIDER": ""}) == Settings()


# --- errors name the key path -----------------------------------------------------------


def test_invalid_value_names_key_path_and_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[queues.email]\nworkers = 0\n")
    message = config_error(path)
    assert "queues.email.workers" in message
    assert "greater than 0" in message
    assert str(path) in message


def test_invalid_value_in_import_export_names_its_path(tmp_path: Path) -> None:
    message = config_error(write(tmp_path, '[queues.import-export]\ntimeout_seconds = "x"\n'))
    assert "queues.import-export.timeout_seconds" in message


def test_typo_key_is_an_unknown_key(tmp_path: Path) -> None:
    message = config_error(write(tmp_path, '[storage]\nurll = "redis://x:6379/0"\n'))
    assert "storage.urll" in message
    assert "unknown key" in message


def test_unknown_section_is_an_unknown_key(tmp_path: Path) -> None:
    message = config_error(write(tmp_path, "[storgae]\nurl = 1\n"))
    assert "storgae: unknown key" in message


def test_unknown_queue_is_named(tmp_path: Path) -> None:
    message = config_error(write(tmp_path, "[queues.emial]\nworkers = 4\n"))
    assert "queues.emial" in message
    assert "unknown queue" in message


def test_unknown_queue_in_env_is_named() -> None:
    message = config_error(environ={"CRMQUEUE_QUEUES__EMIAL__WORKERS": "4"})
    assert "queues.emial" in message


def test_unknown_env_key_is_named() -> None:
    message = config_error(environ={"CRMQUEUE_STORAGE__NOPE": "1"})
    assert "storage.nope" in message
    assert "unknown key" in message


def test_env_name_without_key_is_rejected() -> None:
    message = config_error(environ={"CRMQUEUE_STORAGE": "redis://x:6379/0"})
    assert "CRMQUEUE_STORAGE" in message


def test_bad_env_value_is_named() -> None:
    message = config_error(environ={"CRMQUEUE_QUEUES__WEBHOOK__ATTEMPTS": "many"})
    assert "queues.webhook.attempts" in message


def test_bad_flag_value_is_named() -> None:
    message = config_error(overrides={"logging.format": "xml"})
    assert "logging.format" in message


def test_queue_section_that_is_not_a_table_is_named(tmp_path: Path) -> None:
    message = config_error(write(tmp_path, "[queues]\nemail = 5\n"))
    assert "queues.email" in message


def test_unknown_storage_scheme_is_named(tmp_path: Path) -> None:
    message = config_error(write(tmp_path, '[storage]\nurl = "mysql://db/queues"\n'))
    assert "storage.url" in message


def test_several_errors_are_all_reported(tmp_path: Path) -> None:
    message = config_error(
        write(tmp_path, "[queues.email]\nworkers = 0\n[health]\nwindow_seconds = -1\n")
    )
    assert "queues.email.workers" in message
    assert "health.window_seconds" in message


def test_bad_toml_syntax_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[queues.email\nworkers = 4\n")
    message = config_error(path)
    assert str(path) in message
    assert "not valid TOML" in message


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    message = config_error(missing)
    assert str(missing) in message
    assert "not found" in message


def test_missing_file_named_by_env_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    message = config_error(environ={"CRMQUEUE_CONFIG": str(missing)})
    assert str(missing) in message


def test_unreadable_config_path_is_a_config_error(tmp_path: Path) -> None:
    directory = tmp_path / "conf.d"
    directory.mkdir()
    assert str(directory) in config_error(directory)


# --- secrets never print ----------------------------------------------------------------


def test_public_dict_masks_every_secret() -> None:
    secrets = {
        "storage": "redis-pw-7d1f",
        "database": "pg-pw-93ab",
        "sendgrid": "SG.sendgrid-secret-11",
        "ses": "aws-secret-22",
        "token": "aws-token-33",
        "resend": "re_resend-secret-44",
        "mailgun": "key-mailgun-secret-55",
        "smtp": "smtp-secret-66",
    }
    settings = load_settings(
        environ={
            "REDIS_HOST": "cache.internal",
            "REDIS_PASSWORD": secrets["storage"],
            "CRMQUEUE_DATABASE__URL": f"postgresql+psycopg://crm:{secrets['database']}@db/crm",
            "SENDGRID_API_KEY": secrets["sendgrid"],
            "AWS_SECRET_ACCESS_KEY": secrets["ses"],
            "AWS_SESSION_TOKEN": secrets["token"],
            "RESEND_API_KEY": secrets["resend"],
            "MAILGUN_API_KEY": secrets["mailgun"],
            "CRMQUEUE_EMAIL__SMTP__PASSWORD": secrets["smtp"],
        }
    )
    # The secrets are really there...
    assert secrets["storage"] in settings.storage.url
    assert settings.email.smtp.password is not None
    assert settings.email.smtp.password.get_secret_value() == secrets["smtp"]
    # ...and never in the public view.
    public = settings.public_dict()
    dumped = json.dumps(public)
    for secret in secrets.values():
        assert secret not in dumped
    assert public["storage"]["url"] == "redis://:********@cache.internal:6379/0"
    assert public["database"]["url"] == "postgresql+psycopg://crm:********@db/crm"
    assert public["email"]["sendgrid"]["api_key"] == "**********"
    # Everything that is not secret is shown as is.
    assert public["queues"]["import-export"]["workers"] == 3
    assert public["email"]["ses"]["region"] == "us-east-1"


def test_public_dict_of_defaults_is_json_and_complete() -> None:
    public = json.loads(json.dumps(Settings().public_dict()))
    assert toml_leaves(public) == set(ALL_KEYS)
    assert public["files"]["dir"] == "crmqueue-data/files"


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:secret@host:6379/0", "redis://:********@host:6379/0"),
        ("redis://user:secret@host:6379/0", "redis://user:********@host:6379/0"),
        ("redis://user:se@cret@host/0", "redis://user:********@host/0"),
        ("postgresql+psycopg://crm@db.internal/crm", "postgresql+psycopg://crm@db.internal/crm"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("sqlite:///crmqueue-data/queues.db", "sqlite:///crmqueue-data/queues.db"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_queue_names_match_settings_sections() -> None:
    assert set(QUEUE_NAMES) == set(Settings().model_dump(by_alias=True)["queues"])


def test_each_bad_value_names_the_source_that_set_it(tmp_path: Path) -> None:
    path = write(tmp_path, "[queues.email]\nattempts = 0\n[storage]\nnope = 1\n")
    message = config_error(
        path,
        environ={"CRMQUEUE_QUEUES__EMAIL__WORKERS": "0", "EMAIL_PROVIDER": "nope"},
        overrides={"queues.report.workers": 0},
    )
    errors = dict(part.split(": ", 1) for part in message.split("; "))
    assert errors["queues.email.workers"].endswith("(from $CRMQUEUE_QUEUES__EMAIL__WORKERS)")
    assert errors["email.provider"].endswith("(from $EMAIL_PROVIDER)")
    assert errors["queues.email.attempts"].endswith(f"(from {path})")
    assert errors["storage.nope"] == f"unknown key (from {path})"
    assert errors["queues.report.workers"].endswith("(from a command-line option)")

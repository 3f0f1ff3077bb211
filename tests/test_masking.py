"""Credentials never shown: ``mask_url`` and every place a store URL or DSN reaches output."""

from __future__ import annotations

import io
import logging

import pytest

from spark_ckpt.backends.base import Backend
from spark_ckpt.backends.memory import MemoryBackend
from spark_ckpt.cli import main
from spark_ckpt.config import CheckpointConfig, mask_url, open_backend, split_url
from spark_ckpt.errors import ConfigError, SparkCkptError, UnknownBackendError
from spark_ckpt.masking import mask_text, userinfo_quoted

PASSWORD = "s3cr@t!"
PG_URL = f"postgresql://alice:{PASSWORD}@127.0.0.1:1/ckpt?sslmode=disable"


@pytest.mark.parametrize(
    "url, masked",
    [
        (PG_URL, "postgresql://alice:***@127.0.0.1:1/ckpt?sslmode=disable"),
        ("postgresql://u:p@ss@w0rd@db.example:5432/x", "postgresql://u:***@db.example:5432/x"),
        ("postgresql://u:pa/ss?w@host/db", "postgresql://u:***@host/db"),
        ("postgresql://:only@host/db", "postgresql://:***@host/db"),
        ("postgresql://me@example.com:pw@host/db", "postgresql://me@example.com:***@host/db"),
        ("postgresql://u:p%40ss@host/db", "postgresql://u:***@host/db"),
        ("postgresql://host/db?user=u&password=hunter2&sslpassword=x&sslmode=require",
         "postgresql://host/db?user=u&password=***&sslpassword=***&sslmode=require"),
        ("s3://bucket/p?endpoint_url=http://k:sk@minio:9000&aws_secret_access_key=abc&secret=s&token=t&region=r",
         "s3://bucket/p?endpoint_url=http://k:***@minio:9000&aws_secret_access_key=***&secret=***&token=***&region=r"),
        ("s3://b/p?index=postgresql%3A%2F%2Fu%3Apw%40h%2Fdb", "s3://b/p?index=postgresql://u:***@h/db"),
        ("host=db user=u password=hunter2 dbname=x", "host=db user=u password=*** dbname=x"),
        ("host=db password='two words'", "host=db password=***"),
        # nothing to mask: left exactly as it is
        ("postgresql://user@host/db", "postgresql://user@host/db"),
        ("postgresql://host:5432/db?application_name=a@b", "postgresql://host:5432/db?application_name=a@b"),
        ("sqlite:///tmp/x.db", "sqlite:///tmp/x.db"),
        ("sqlite:///tmp/a:b@c.db", "sqlite:///tmp/a:b@c.db"),
        ("file://./dir", "file://./dir"),
        ("memory://", "memory://"),
    ],
)
def test_mask_url(url, masked):
    assert mask_url(url) == masked


def test_mask_text_removes_a_password_quoted_by_a_driver():
    message = f'could not translate host name "t!@127.0.0.1"; password {PASSWORD}, encoded s3cr%40t%21; {PG_URL}'
    masked = mask_text(message, PG_URL)
    assert PASSWORD not in masked and "s3cr%40t%21" not in masked and "***" in masked


def test_unescaped_at_is_encoded_for_parsers_that_split_at_the_first_one():
    assert userinfo_quoted(PG_URL).startswith("postgresql://alice:s3cr%40t%21@127.0.0.1:1/")
    assert userinfo_quoted("postgresql://u:p%40ss@h/db") == "postgresql://u:p%40ss@h/db"  # never twice


# -- where URLs are shown ------------------------------------------------------------------------------
def test_repr_of_a_config_masks_the_backend_url():
    config = CheckpointConfig(backend=PG_URL, backend_options={"password": "hunter2", "pool_max_size": 2})
    for text in (repr(config), str(config)):
        assert PASSWORD not in text and "hunter2" not in text
        assert "127.0.0.1:1/ckpt" in text and "pool_max_size" in text
    path_form = CheckpointConfig(backend="postgres", path=f"alice:{PASSWORD}@127.0.0.1:1/ckpt")
    assert PASSWORD not in repr(path_form)
    assert config.backend_url() == PG_URL  # still the real URL to connect with


def test_errors_opening_a_store_mask_the_url(no_env_config):
    """An unknown scheme, a string that is not a URL, a bad sqlite URL: the message has no password."""
    for url in (PG_URL.replace("postgresql", "nosuch"), f"host=h password={PASSWORD}"):
        with pytest.raises(ConfigError) as info:
            open_backend(url)
        assert PASSWORD not in str(info.value)
    with pytest.raises(UnknownBackendError, match="127.0.0.1:1"):
        open_backend(PG_URL.replace("postgresql", "nosuch"))
    with pytest.raises(ConfigError) as info:
        split_url(f"host=h user=u password={PASSWORD} sslpassword={PASSWORD}")
    assert PASSWORD not in str(info.value)
    with pytest.raises(ConfigError) as info:
        open_backend(f"sqlite://?password={PASSWORD}")
    assert PASSWORD not in str(info.value)


def test_cli_list_and_export_never_show_the_password(tmp_path, capsys, no_env_config):
    """`list`, `export` (either side) and `rekey` on such a URL: nothing printed holds the password."""
    store = f"sqlite:///{tmp_path / 's.db'}"
    open_backend(store).close()
    # (with the PostgreSQL plugin installed, the first URL reaches it: a refused connection)
    for url in (PG_URL + "&pool_timeout=1", PG_URL.replace("postgresql", "nosuch")):
        for argv in (
            ["--store", url, "list"],
            ["export", "--from", url, "--to", store],
            ["export", "--from", store, "--to", url],
            *([] if url.startswith("postgresql") else [
                ["--store", url, "list", "--executions", "--json"],
                ["--store", url, "verify"],
                ["--store", url, "approvals", "list"],
            ]),
        ):
            out = io.StringIO()
            code = main(argv, out=out)
            err = capsys.readouterr().err
            assert code == 2 and err.startswith("spark-ckpt: error: ")
            assert PASSWORD not in out.getvalue() + err and "s3cr" not in err, argv


def test_cli_output_naming_a_store_masks_it(tmp_path, no_env_config):
    """A store URL with a secret query parameter (ignored by sqlite) is shown masked."""
    url = f"sqlite:///{tmp_path / 's.db'}?password={PASSWORD}"
    open_backend(url).close()
    out = io.StringIO()
    assert main(["--store", url, "list"], out=out) == 0
    assert "no checkpoints in" in out.getvalue() and PASSWORD not in out.getvalue()
    out = io.StringIO()
    assert main(["export", "--from", url, "--to", f"sqlite:///{tmp_path / 'd.db'}?password={PASSWORD}"], out=out) == 0
    assert "exported 0 checkpoint(s)" in out.getvalue() and PASSWORD not in out.getvalue()


class _DsnBackend(MemoryBackend):
    """A backend that describes itself with its DSN, as network backends do."""

    name = "dsn"

    def __init__(self, dsn: str) -> None:
        super().__init__()
        self.dsn = dsn

    def describe(self) -> str:
        return f"dsn ({self.dsn})"


def test_repr_of_a_backend_masks_its_description():
    backend = _DsnBackend(PG_URL)
    assert PASSWORD not in repr(backend) and "127.0.0.1:1" in repr(backend)
    assert repr(MemoryBackend()) == "<MemoryBackend memory>"
    assert isinstance(backend, Backend)


def test_log_lines_of_a_failing_run_hold_no_password(caplog, no_env_config):
    """Opening the store fails before anything runs, and nothing logged or raised shows the password."""
    caplog.set_level(logging.DEBUG)
    with pytest.raises(SparkCkptError) as info:
        CheckpointConfig(backend=PG_URL.replace("postgresql", "nosuch")).open_backend()
    assert PASSWORD not in str(info.value) and PASSWORD not in caplog.text

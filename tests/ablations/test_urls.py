"""Database and server URLs: passwords never shown, typos refused, plain postgresql:// given a driver."""

import importlib.util

import pytest

from ablations.errors import SenetError
from ablations.tracking import tracking_uri
from ablations.urls import check_url, redact, scrub, with_driver


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:s3cret@db:5432/x", "postgresql://u:***@db:5432/x"),
        # item 3: a password in the query string used to be printed
        ("postgresql+psycopg2://u@db/x?password=s3cret&sslmode=require", "postgresql+psycopg2://u@db/x?password=***&sslmode=require"),
        ("postgresql://u@db/x?sslpassword=s3cret", "postgresql://u@db/x?sslpassword=***"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("postgresql://u@db/x", "postgresql://u@db/x"),
        ("sqlite:////abs/results/mlflow.db", "sqlite:////abs/results/mlflow.db"),
    ],
)  # fmt: skip
def test_redact_hides_every_password(url, shown):
    assert redact(url) == shown and "s3cret" not in redact(url)


def test_scrub_removes_the_secrets_of_a_url_from_a_server_message():
    """item 16: the tracking check printed the server's error text unredacted."""
    message = 'FATAL: password authentication failed (connection to "postgresql://u:s3cret@db/x")'
    assert "s3cret" not in scrub(message, "postgresql://u:s3cret@db/x")


@pytest.mark.parametrize("typo", ["postgresql:/u:s3cret@db/x", "postgresql+psycopg2//u:s3cret@db/x", "u:s3cret@db/x"])
def test_a_url_without_its_slashes_is_refused_not_made_a_file(typo):
    """item 16: such a typo silently became a journal file in a folder named after the credentials."""
    with pytest.raises(SenetError, match="looks like a URL without '://'") as err:
        check_url(typo, "--storage", ("postgresql",))
    assert "s3cret" not in str(err.value)


def test_paths_and_known_schemes_pass_unknown_schemes_do_not():
    check_url("results/ledger.journal", "--storage", ("postgresql",))
    check_url("postgresql+psycopg://u@db/x", "--storage", ("postgresql",))
    with pytest.raises(SenetError, match="unknown scheme; allowed: postgresql"):
        check_url("mongodb://db/x", "--storage", ("postgresql",))


def test_plain_postgresql_gets_an_installed_driver():
    """item 4: SQLAlchemy 2.1 maps postgresql:// to psycopg 3, which the postgres extra did not install."""
    url = with_driver("postgresql://u@db/x", "--storage")
    driver = "psycopg" if importlib.util.find_spec("psycopg") else "psycopg2"
    assert url == f"postgresql+{driver}://u@db/x"
    assert with_driver("postgresql+psycopg2://u@db/x", "--storage") == "postgresql+psycopg2://u@db/x"
    assert with_driver("sqlite:///x.db", "--storage") == "sqlite:///x.db"


def test_tracking_uri_from_the_environment_is_checked_like_the_option(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql:/u:s3cret@db/x")
    with pytest.raises(SenetError, match="^MLFLOW_TRACKING_URI: .* looks like a URL") as err:
        tracking_uri(None, tmp_path)
    assert "s3cret" not in str(err.value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking_uri(None, tmp_path) == f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"

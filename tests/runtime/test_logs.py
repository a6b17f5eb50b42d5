"""engine._logs.Logger: bound once per structlog configuration, following every change."""

from __future__ import annotations

import logging

import structlog
from structlog.testing import capture_logs

from engine._logs import Logger


def test_a_logger_is_bound_once_per_configuration() -> None:
    """Calls under one configuration share one bound logger; configuring structlog again (a
    level filter here) gets a new one, which the calls after it share."""
    log = Logger("nanoedit.test")
    first = log.get()
    assert log.get() is first
    saved = structlog.get_config()
    try:
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
        filtered = log.get()
        assert filtered is not first and log.get() is filtered
    finally:
        structlog.configure(**saved)
    assert log.get() is not filtered


def test_log_calls_follow_structlog_being_reconfigured() -> None:
    """Two captures one after the other, then a level filter: each takes effect at once."""
    log = Logger("nanoedit.test")
    with capture_logs() as first:
        log.info("one")
        log.bind(k="v").warning("two")
    with capture_logs() as second:
        log.info("three")
    saved = structlog.get_config()
    try:
        with capture_logs() as third:
            structlog.configure(
                wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING)
            )
            log.info("hidden")
            log.warning("shown")
    finally:
        structlog.configure(**saved)
    assert [(e["event"], e.get("k")) for e in first] == [("one", None), ("two", "v")]
    assert [e["event"] for e in second] == ["three"]
    assert [e["event"] for e in third] == ["shown"]

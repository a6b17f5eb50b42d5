"""Tests of the providers layer."""

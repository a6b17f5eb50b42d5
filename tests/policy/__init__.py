"""Tests of the policy layer."""

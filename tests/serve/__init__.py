"""Tests of engine.serve."""

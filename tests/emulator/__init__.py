"""Tests of engine.emulator."""

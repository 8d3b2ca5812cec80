"""Shared fixtures: real Azurite and the project's local Azure emulator, started once per session."""

pytest_plugins = ["tests.plugins.azurite", "tests.plugins.emulator", "tests.support.engine"]

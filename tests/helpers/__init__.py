"""Helpers shared by the test suites that run the real system (tests/integration, tests/browser).

`pyproject.toml` puts tests/ on sys.path for pytest (`pythonpath`), so test code imports
`helpers.live_server`."""

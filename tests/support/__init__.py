"""Real servers and archive builders shared by the test suites (no mocks)."""

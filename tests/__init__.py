"""The test suite, a package so that test files share code through ``tests.helpers``."""

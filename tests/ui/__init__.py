"""Browser tests of the search page (marker `ui`; run with `make test-ui`)."""

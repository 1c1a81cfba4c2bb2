"""A chaos downstream: an independent server of `docs/downstream-http.md` with fault injection and an auditable
ledger, for chaos tests that run the whole order-saga stack against it."""

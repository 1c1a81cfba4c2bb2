"""A local Cosmos DB server (`@vercel/cosmosdb-server`, pinned in package-lock.json) for integration tests."""

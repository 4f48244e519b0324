"""Domain logic: no FastAPI here. Called by the routes, the CLI and tests alike."""

"""Web: what the HTTP functions share. App factory, dependencies, API schemas, error
documentation, request telemetry, rate limits, health. The domain never imports it."""

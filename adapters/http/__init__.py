"""The engine as a local service: an HTTP API (Litestar on uvicorn) inside `ledger run`.

- `api`: the routes, their request and answer Structs, and the app;
- `tokens`: bearer tokens with read or write scope, in a 0600 file beside the store;
- `errors`: every failure as JSON with a stable code and one line;
- `metrics`: the engine's counters in Prometheus text;
- `server`: uvicorn in the engine's task group, and the file naming its address;
- `client`: how one-shot CLI commands reach a running engine.
"""

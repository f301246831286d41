"""The traffic policies around the providers' Router, from the outside in: the request
router (rules, router model), the response cache, then the rate limits inside the
Router's fallback chain walk; usage and cost are recorded from each request's end.

- `limits.py`: rate limits per service, per model and per client (sliding 60 s windows,
  prompt tokens estimated up front and corrected with the real usage);
- `usage.py`: prices, one usage row per request in SQLite (written in batches off the
  request path), the /v1/usage totals, the usage counters of /metrics.
"""
